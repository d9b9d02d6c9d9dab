"""Simulation settings: one frozen dataclass, named presets, JSON loading with clear errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mtal_models.nets.config import CONFIGS
from mtal_models.strategies import STRATEGIES
from mtal_models.training.data import SAMPLINGS

__all__ = ["DATASET_READERS", "PRESETS", "SimConfig", "load_config", "register_dataset"]

DATASETS = ("synthetic", "nyud", "pascal", "camvid", "camvid-2tag", "pennfudan")
PHOTO_DATASETS = ("camvid", "camvid-2tag", "pennfudan")  # real photographs: mtal_models.simulate.photos
# Readers added from outside the core (name -> reader(config) -> SimData, read from ``config.path``), e.g.
# "ls-export", which the ``mtal`` command registers from the backend (``backend.cli``): the core
# never imports Label Studio code, so a reader that needs it is composed in, not imported.
DATASET_READERS: dict[str, Callable[[SimConfig], Any]] = {}
_COMPOSED = {"ls-export": "the `mtal simulate` command (backend.cli), which registers it"}


def register_dataset(name: str, reader: Callable[[SimConfig], Any]) -> None:
    """Make ``dataset=name`` read with ``reader(config)``, which returns a ``SimData`` (pool and held-out
    samples, modalities, class names) from ``config.path``. Built-in names cannot be replaced."""
    if name in DATASETS:
        raise ValueError(f"dataset {name!r} is built in; a reader cannot replace it")
    DATASET_READERS[name] = reader


def _dataset_why() -> str:
    return f"must be one of {(*DATASETS, *DATASET_READERS, *_COMPOSED)}"


def composed_reader_missing(name: str) -> str:
    """Why dataset ``name`` (composed in from outside the core, e.g. "ls-export") cannot be read here."""
    return f"dataset {name!r} has no reader in this process; it is available through {_COMPOSED[name]}"


@dataclass(frozen=True)
class SimConfig:
    """An offline active-learning experiment.

    dataset:          "synthetic" (rendered scenes, no files), "nyud" or "pascal" (``path`` = dataset root;
                      the pool comes from split ``train_split``, the held-out set from ``val_split``), "camvid" /
                      "camvid-2tag" (``path`` = a SegNet-layout CamVid; pool = train, held-out = val) or
                      "pennfudan" (``path`` = Penn-Fudan; held-out = ``val_images`` images drawn with ``data_seed``),
                      or a name in ``DATASET_READERS`` (``register_dataset``), e.g. "ls-export" under ``mtal``.
    modalities:       modality names to learn (a subset of what the dataset offers); empty = all.
    image_size:       every image is resized to image_size x image_size (synthetic: rendered at that size).
                      With ``image_width`` > 0 (photographs) images fit an image_size (high) x image_width canvas,
                      aspect ratio kept, padding ignored (:func:`mtal_models.data.photos.fit_canvas`).
    image_width:      canvas width for the photograph datasets (0 = image_size: a square canvas).
    n_images:         pool size (disk datasets: the first n ids of the split, 0 = all).
    val_images:       held-out images used for every evaluation (fixed across strategies and seeds).
    initial:          initial labelled images (all modalities): a count (>= 1) or a fraction (< 1) of the pool.
    rounds:           selection rounds after the initial training.
    budget:           (image, modality) labels bought per round.
    strategies:       registry names (see ``mtal_models.strategies.STRATEGIES``).
    strategy_options: per strategy name, keyword options for ``get_strategy`` (e.g. {"partal": {"mc_samples": 8}}).
    seeds:            one run per seed and strategy; a seed fixes the initial set and the initial weights.
    net:              network preset ("tiny", "small", "default").
    epochs_per_round: epochs of training on the labelled set after every labelling step (when
                      ``steps_per_round`` is 0).
    steps_per_round:  > 0: train exactly this many optimizer steps per round, whatever the size of the
                      labelled set (so a round's score measures its labels, not how many steps it got).
    retrain:          True: every round trains from the seed's initial weights (as the papers retrain each
                      cycle); False: continue from the previous round's weights.
    sampling:         how the fixed-step loader (``steps_per_round`` / ``full_steps`` > 0) draws labelled images:
                      "modality" (a modality uniformly, then one of the images labelled for it uniformly),
                      "label" (an (image, modality) label uniformly, i.e. images in proportion to their label
                      count) or "image" (images uniformly). The three coincide when every image is fully
                      labelled; they differ on partially labelled sets (``partal``). See docs/simulate.md.
    step_budget:      with ``steps_per_round`` > 0: "steps" trains exactly that many optimizer steps; "labels"
                      scales them so a round presents as many labels as ``steps_per_round`` steps over fully
                      labelled images (``loop.label_steps``: x M / expected labels per draw). Equal for
                      image-level strategies; pair selection (``partal``), whose images carry ~1-2 of M
                      labels, gets proportionally more steps instead of 1/M of the gradient per label.
    full_epochs:      epochs of the full-data reference run (all labels), which defines 100% of the score.
    full_steps:       > 0: the reference trains this many optimizer steps instead of ``full_epochs``.
    substitution_prob: PartAL GT substitution during training (``TrainConfig.substitution_prob``), for every
                      strategy and the reference alike; trains the label encoders that PartAL-conditioned
                      pool predictions go through.
    pseudo_label_weight: PartAL pseudo-labels (``TrainConfig.pseudo_label_weight``, 0 = off): images with
                      some of their labels learn the missing ones from the network's predictions with the
                      present labels given. Only partially labelled images (``partal``) are affected.
    pseudo_label_confidence: categorical guesses keep the pixels at least this likely
                      (``TrainConfig.pseudo_label_confidence``).
    pseudo_label_teacher: who guesses: "self" (the network being trained, ramped in) or "previous" (the
                      previous round's trained network, frozen, at full weight; round 0 has no partial labels).
    mtpsl_weight:     MTPSL cross-task consistency term on partial labels (``TrainConfig.mtpsl_weight``,
                      0 = off, as the backend's ``MTAL_MTPSL_WEIGHT``); only partially labelled images feed it.
    semi_weight:      semi-supervised term on the images without any label (``TrainConfig.semi_weight``,
                      ``fit(..., unlabelled=)``; 0 = off, as the backend's ``MTAL_SEMI_WEIGHT``).
    semi_class_share: with ``semi_weight`` > 0, each class the teacher predicts keeps its most confident share
                      of pixels as pseudo-labels below the threshold (``TrainConfig.semi_class_share``, 0.5; 0 = off).
    min_steps, steps_per_label: the step budget (:mod:`mtal_models.training.budget`, 0 and 0 = off): every
                      training of a round takes ``max(min_steps, ceil(steps_per_label · N))`` optimizer steps
                      for its N labelled images, and the full-data reference the same rule over the whole pool,
                      instead of ``steps_per_round`` / ``full_steps`` (docs/training.md, "How long a run trains").
    pretrain_steps:   > 0: the cold start (issue #25): before round 0 every seed's network pretrains its trunk
                      on the whole pool's images with :func:`mtal_models.training.pretrain.pretrain` (the
                      backend's pretrain job; steps instead of its minutes, so runs repeat), and every
                      training starts from those weights. 0 = off.
    initial_strategy: how round 0's images are chosen: "random" (seeded) or "typiclust" (typical images of
                      the pool's clusters in the network's pooled features, as the backend's first ranking
                      after a pretrain); shared by every strategy of a seed.
    batch_size, lr:   training settings (Adam, poly LR per round).
    mc_samples:       default MC-dropout passes for strategies that take ``mc_samples``.
    device:           "auto" (CUDA when present, else CPU), "cpu", "cuda".
    threads:          torch CPU threads (0 = torch's default).
    target:           fraction of the full-data multi-task score to reach (0.95).
    data_seed:        seed of the synthetic pool (the held-out set uses data_seed + 1).
    """

    dataset: str = "synthetic"
    path: str = ""
    train_split: str = "train"
    val_split: str = "val"
    modalities: tuple[str, ...] = ("semantic", "depth", "normals")
    image_size: int = 64
    image_width: int = 0
    n_images: int = 240
    val_images: int = 80
    initial: float = 24
    rounds: int = 5
    budget: int = 72
    strategies: tuple[str, ...] = ("random", "partal", "partal_image", "rbal", "mtal")
    strategy_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1)
    net: str = "small"
    epochs_per_round: int = 3
    steps_per_round: int = 0
    retrain: bool = False
    sampling: str = "modality"
    step_budget: str = "steps"
    full_epochs: int = 10
    full_steps: int = 0
    substitution_prob: float = 0.0
    pseudo_label_weight: float = 0.0
    pseudo_label_confidence: float = 0.9
    pseudo_label_teacher: str = "self"
    mtpsl_weight: float = 0.0
    semi_weight: float = 0.0
    semi_class_share: float = 0.5
    min_steps: int = 0
    steps_per_label: float = 0.0
    pretrain_steps: int = 0
    initial_strategy: str = "random"
    batch_size: int = 16
    lr: float = 1e-3
    mc_samples: int = 8
    device: str = "auto"
    threads: int = 0
    target: float = 0.95
    data_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("modalities", "strategies", "seeds"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise ValueError(f"SimConfig.{name} must be a list, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        checks = [
            ("dataset", self.dataset in (*DATASETS, *DATASET_READERS, *_COMPOSED), _dataset_why()),
            ("path", self.dataset in ("synthetic", *PHOTO_DATASETS, *DATASET_READERS, *_COMPOSED) or bool(self.path),
             f"is required for dataset {self.dataset!r}"),  # photographs: checked when read (presets have none)
            ("image_size", self.image_size >= 16, "must be >= 16"),
            ("image_width", self.image_width == 0 or (self.image_width >= 16 and self.dataset in PHOTO_DATASETS),
             "must be 0, or >= 16 with a photograph dataset"),
            ("n_images", self.n_images >= 2 or (self.dataset != "synthetic" and self.n_images == 0), "must be >= 2"),
            ("val_images", self.val_images >= 1, "must be >= 1"),
            ("initial", self.initial > 0, "must be > 0 (a count >= 1 or a fraction < 1)"),
            ("rounds", self.rounds >= 0, "must be >= 0"),
            ("budget", self.budget >= 1 and float(self.budget).is_integer(), "must be an integer >= 1"),
            ("strategies", len(self.strategies) > 0, "must name at least one strategy"),
            ("seeds", len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds), "must be non-empty, unique"),
            ("net", self.net in CONFIGS, f"must be one of {sorted(CONFIGS)}"),
            ("epochs_per_round", self.epochs_per_round >= 1, "must be >= 1"),
            ("steps_per_round", self.steps_per_round >= 0, "must be >= 0 (0 = use epochs_per_round)"),
            ("retrain", isinstance(self.retrain, bool), "must be true or false"),
            ("sampling", self.sampling in SAMPLINGS, f"must be one of {SAMPLINGS}"),
            ("step_budget", self.step_budget in ("steps", "labels"), "must be 'steps' or 'labels'"),
            ("full_epochs", self.full_epochs >= 1, "must be >= 1"),
            ("full_steps", self.full_steps >= 0, "must be >= 0 (0 = use full_epochs)"),
            ("substitution_prob", 0 <= self.substitution_prob <= 1, "must be in [0, 1]"),
            ("pseudo_label_weight", self.pseudo_label_weight >= 0, "must be >= 0"),
            ("pseudo_label_confidence", 0 <= self.pseudo_label_confidence <= 1, "must be in [0, 1]"),
            ("mtpsl_weight", self.mtpsl_weight >= 0, "must be >= 0"),
            ("semi_weight", self.semi_weight >= 0, "must be >= 0"),
            ("semi_class_share", 0 <= self.semi_class_share <= 1, "must be in [0, 1]"),
            ("min_steps", self.min_steps >= 0, "must be >= 0 (0 = no floor)"),
            ("steps_per_label", self.steps_per_label >= 0, "must be >= 0 (0 and min_steps 0 = no step budget)"),
            ("pretrain_steps", self.pretrain_steps >= 0, "must be >= 0 (0 = off)"),
            ("initial_strategy", self.initial_strategy in ("random", "typiclust"), "must be 'random' or 'typiclust'"),
            ("pseudo_label_teacher", self.pseudo_label_teacher in ("self", "previous"), "must be 'self' or 'previous'"),
            ("pseudo_label_weight", self.pseudo_label_weight == 0 or self.substitution_prob > 0,
             "needs substitution_prob > 0 (it trains the label encoders that condition the guesses)"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("mc_samples", self.mc_samples >= 2, "must be >= 2"),
            ("threads", self.threads >= 0, "must be >= 0"),
            ("target", 0 < self.target <= 1, "must be in (0, 1]"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"SimConfig.{name} {why}, got {getattr(self, name)!r}")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"SimConfig.strategies: unknown {unknown}; valid: {sorted(STRATEGIES)}")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"SimConfig.strategies: duplicates in {list(self.strategies)}")
        if self.initial >= 1 and not float(self.initial).is_integer():
            raise ValueError(f"SimConfig.initial: a count must be an integer, got {self.initial!r}")
        if not isinstance(self.strategy_options, dict):
            raise ValueError(f"SimConfig.strategy_options must be a dict, got {self.strategy_options!r}")
        extra = [k for k in self.strategy_options if k not in self.strategies]
        if extra:
            raise ValueError(f"SimConfig.strategy_options: {extra} are not in strategies {list(self.strategies)}")

    def initial_count(self, n_pool: int) -> int:
        """Initial labelled images for a pool of ``n_pool`` images (at least 1, at most n_pool - 1)."""
        count = int(round(self.initial * n_pool)) if self.initial < 1 else int(self.initial)
        if not 1 <= count < n_pool:
            raise ValueError(f"SimConfig.initial: {count} initial images for a pool of {n_pool}; need 1..{n_pool - 1}")
        return count

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("modalities", "strategies", "seeds"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"SimConfig: unknown field(s) {unknown}; valid: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes: Any) -> SimConfig:
        return replace(self, **changes)


PRESETS: dict[str, SimConfig] = {
    # the unit test: 2 rounds on 16 images, one seed, the tiny net, 32 px, one epoch per round
    "tiny": SimConfig(
        image_size=32, n_images=16, val_images=8, initial=4, rounds=2, budget=6,
        strategies=("random", "partal"), seeds=(0,), net="tiny", epochs_per_round=1, full_epochs=1,
        batch_size=8, mc_samples=2,
    ),
    # finishes on a 2-core CPU in under 30 minutes with one torch thread (measured time: docs/results.md).
    # Every round retrains from the seed's initial weights for 200 steps' worth of labels (more steps for pair-
    # selected sets, step_budget), and the reference gets the same recipe, so a round's score measures its
    # labels, not its share of gradient steps (docs/simulate.md).
    "default": SimConfig(
        image_size=32, n_images=320, val_images=96, initial=8, rounds=5, budget=48, seeds=(0, 1, 2),
        steps_per_round=200, retrain=True, full_steps=200, lr=5e-3, substitution_prob=0.2,
        strategies=("random", "partal", "partal_image", "rbal", "mtal", "mtal_unweighted"), step_budget="labels",
    ),
    # det+seg (MTC's setting): semantic masks + object boxes of the synthetic scenes at 64 px, BoxMask against
    # Random and CoreSet; reports mDSQ. lr 1e-3: the FCOS box regression of the det+seg net is not trusted
    # at the dense presets' 5e-3 (issue 18 measured collapsed boxes there on Penn-Fudan).
    "detseg": SimConfig(
        image_size=64, n_images=160, val_images=48, initial=8, rounds=4, budget=16, seeds=(0, 1, 2),
        modalities=("semantic", "objects"), steps_per_round=150, retrain=True, full_steps=150, lr=1e-3,
        strategies=("random", "boxmask", "coreset"), step_budget="labels",
    ),
    # Real photographs (docs/results.md "Real photographs"); ``path`` is required: --data-dir. One seed of a
    # round is one training of steps_per_round steps from the seed's initial weights (retrain), as the
    # reference, which sees the whole pool with the same recipe. Sized for a 2-core CPU shared with other
    # jobs (the measured run: docs/results.md): CamVid at 96 x 128 (360 x 480 / 3.75), 150 steps, 10 initial
    # images and 10 a round: round 0 is well below the reference, and a pilot with 30 a round found 40
    # random images above the 150-step reference already (0.312 vs 0.290 mIoU), so the steps are fine.
    "camvid": SimConfig(
        dataset="camvid", modalities=("semantic",), image_size=96, image_width=128, n_images=0, val_images=101,
        initial=10, rounds=3, budget=10, seeds=(0, 1, 2), steps_per_round=150, full_steps=150, retrain=True,
        lr=5e-3, batch_size=8, mc_samples=4, strategies=("random", "coreset", "equal", "partal_image"),
    ),
    # camvid-2tag as camvid, with labels counted per (image, tag): 10 initial images (20 labels) + 3 rounds of 20.
    "camvid-2tag": SimConfig(
        dataset="camvid-2tag", modalities=("stuff", "things"), image_size=96, image_width=128, n_images=0,
        val_images=101, initial=10, rounds=3, budget=20, seeds=(0, 1, 2), steps_per_round=150, full_steps=150,
        retrain=True, lr=5e-3, batch_size=8, mc_samples=4, step_budget="labels", substitution_prob=0.2,
        strategies=("random", "partal", "partal_image", "coreset"),
    ),
    # Penn-Fudan on the shared CPU: 144 x 144 (aspect kept), 150 steps, 12 initial images + 2 rounds of 24 labels.
    "pennfudan": SimConfig(
        dataset="pennfudan", modalities=("boxes", "mask"), image_size=144, image_width=144, n_images=120,
        val_images=50, initial=12, rounds=2, budget=24, seeds=(0, 1, 2), steps_per_round=150, full_steps=150,
        retrain=True, lr=5e-3, batch_size=8, mc_samples=4, strategies=("random", "boxmask", "coreset", "partal_image"),
    ),
    # A user's own Label Studio project (``mtal simulate --config ls-export --data-dir EXPORT``, README): every
    # modality of its labeling config, a small pool; lower val_images / initial / budget for a small export.
    "ls-export": SimConfig(
        dataset="ls-export", modalities=(), image_size=128, n_images=0, val_images=20, initial=8, rounds=4,
        budget=8, seeds=(0, 1, 2), steps_per_round=200, full_steps=200, retrain=True, lr=5e-3, batch_size=8,
        step_budget="labels", substitution_prob=0.2, strategies=("random", "coreset", "partal", "partal_image"),
    ),
}  # fmt: skip


def load_config(spec: str | Path, **overrides: Any) -> SimConfig:
    """A preset name or a JSON file (a preset can be the base: ``{"preset": "default", "rounds": 3}``);
    ``overrides`` (non-None values) replace fields. Errors raise ValueError naming the field or file."""
    spec = str(spec)
    if spec in PRESETS:
        base = PRESETS[spec].to_dict()
    else:
        p = Path(spec)
        if not p.is_file():
            raise ValueError(f"config {spec!r}: not a preset ({sorted(PRESETS)}) and no such file")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"config {spec}: invalid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"config {spec}: must be a JSON object")
        preset = data.pop("preset", "default")
        if preset not in PRESETS:
            raise ValueError(f"config {spec}: unknown preset {preset!r}; valid: {sorted(PRESETS)}")
        base = {**PRESETS[preset].to_dict(), **data}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return SimConfig.from_dict(base)
