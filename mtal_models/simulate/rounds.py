"""The offline active-learning loop: one run per (strategy, seed), plus a full-data reference per seed.

Round 0 labels a random initial set of images (all modalities; the same images for every strategy of a
seed) and trains from the seed's initial weights. Each later round scores the whole pool with the
current model (labelled and unlabelled images: ``labelled`` masks tell the strategy what to skip and
diversity strategies use the labelled ones), buys ``budget`` (image, modality) labels from the oracle
through :class:`~mtal_models.data.LabelPool`, and trains on every labelled pair (a fresh Adam + poly
schedule per round) for ``steps_per_round`` optimizer steps (drawing images as ``sampling`` says:
:func:`mtal_models.training.data.draw_probabilities`), or ``epochs_per_round`` epochs when it is 0,
continuing from the previous round's weights, or from the seed's initial weights when ``retrain``; then
evaluates on the fixed held-out set.

Round 0 is the same training for every strategy of a seed that trains the network alone (no LL4AL module;
committee training is keyed apart): the first such run stores it in ``round0/seed<s>[-committee].pt`` and
the others load it instead of training it again.

Resumable: after every round ``runs/<strategy>/seed<s>/state.json`` (pool, rows, strategy state, MTAL
sample weights) and the round's checkpoint are written atomically; a rerun skips finished rounds and
references, and a larger ``rounds`` continues from the last one.
"""

from __future__ import annotations

import copy
import inspect
import json
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mtal_models.atomic import atomic_write
from mtal_models.data import LabelPool, Sample, collate
from mtal_models.modalities import ModalitySpec
from mtal_models.nets import build_network, choose_network
from mtal_models.nets.base import MultiTaskNet
from mtal_models.simulate.cold_start import pretrained_start, typical_images
from mtal_models.simulate.config import SimConfig
from mtal_models.simulate.score import flat_metrics, mdsq_score, task_scores
from mtal_models.simulate.sim_data import SimData
from mtal_models.simulate.stored_key import settings_key
from mtal_models.strategies import (
    STRATEGIES,
    LossPredictionModule,
    Strategy,
    collect_pool_outputs,
    get_strategy,
    make_ll4al_extra_loss,
)
from mtal_models.strategies.selection import merge_weights
from mtal_models.training import (
    SampleDataset,
    TrainConfig,
    evaluate,
    fit,
    load_checkpoint,
    make_loader,
    save_checkpoint,
)
from mtal_models.training.budget import step_budget
from mtal_models.training.data import draw_probabilities, make_sampler

__all__ = [
    "budget_steps", "initial_images", "label_steps", "merge_weights", "run_reference", "run_strategy", "settings_key",
]

Tick = Callable[[str], None]


def initial_images(config: SimConfig, n_pool: int, seed: int) -> list[int]:
    """The seed's initial labelled images (sorted indices); independent of the strategy."""
    rng = np.random.default_rng([int(seed), 7919])
    return sorted(int(i) for i in rng.choice(n_pool, config.initial_count(n_pool), replace=False))


def _write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda fh: fh.write(json.dumps(data, indent=1).encode()))


def _build_model(config: SimConfig, modalities: Mapping[str, ModalitySpec], seed: int) -> MultiTaskNet:
    torch.manual_seed(seed)
    return build_network(choose_network(modalities), modalities, config.net)


def _train_config(config: SimConfig, epochs: int, seed: int, committee: bool) -> TrainConfig:
    return TrainConfig(
        epochs=epochs, batch_size=config.batch_size, lr=config.lr, device=config.device, seed=seed,
        committee=committee, substitution_prob=config.substitution_prob,
        pseudo_label_weight=config.pseudo_label_weight, pseudo_label_confidence=config.pseudo_label_confidence,
        mtpsl_weight=config.mtpsl_weight, semi_weight=config.semi_weight, semi_class_share=config.semi_class_share,
    )  # fmt: skip


def _train_loader(
    samples: list[Sample],
    modalities: Mapping[str, ModalitySpec],
    batch_size: int,
    seed: int,
    steps: int = 0,
    sampling: str = "image",
) -> DataLoader:
    """Shuffled Batch loader; drops a last batch of one sample (BatchNorm cannot train on it).

    ``steps`` > 0: one pass of the loader is exactly ``steps`` batches of ``batch_size``, so training for one
    "epoch" of it is a fixed number of optimizer steps whatever the number of samples. Samples are drawn
    as :func:`~mtal_models.training.data.draw_probabilities` says for ``sampling`` (``make_sampler``): when
    these are uniform (e.g. every image fully labelled), as whole shuffled passes over ``samples`` back to
    back, the last one cut; otherwise independently with replacement (``WeightedRandomSampler``)."""
    generator = torch.Generator().manual_seed(seed)
    collate_fn = partial(collate, modalities=dict(modalities))
    if steps > 0:
        sampler = make_sampler(samples, list(modalities), sampling, steps * batch_size, generator)
        return DataLoader(SampleDataset(samples), batch_size=batch_size, sampler=sampler, collate_fn=collate_fn)
    return DataLoader(
        SampleDataset(samples), batch_size=batch_size, shuffle=True, generator=generator,
        collate_fn=collate_fn, drop_last=len(samples) % batch_size == 1,
    )  # fmt: skip


def label_steps(samples: list[Sample], names: list[str], sampling: str, steps: int) -> int:
    """Optimizer steps that present as many labels as ``steps`` steps over fully labelled images: ``steps``
    x M / E[labels per draw] (rounded up), with E from :func:`~mtal_models.training.data.draw_probabilities`.
    ``steps`` itself when every drawn image carries all M modalities; up to M x ``steps`` for pairs."""
    p = draw_probabilities(samples, names, sampling)
    per_draw = float(sum(pi * sum(s.is_present(m) for m in names) for pi, s in zip(p, samples, strict=True)))
    return steps if per_draw <= 0 else int(np.ceil(steps * len(names) / per_draw - 1e-9))


def _schedule(steps: int, epochs: int) -> tuple[int, int]:
    """(loader steps, epochs) for a training of ``steps`` optimizer steps (> 0) or else ``epochs`` epochs."""
    return (steps, 1) if steps > 0 else (0, epochs)


def budget_steps(config: SimConfig, n_labelled: int, fixed: int) -> int:
    """Optimizer steps of a training on ``n_labelled`` images: the step budget's
    (:func:`~mtal_models.training.budget.step_budget`) when ``min_steps`` or ``steps_per_label`` is set, else
    ``fixed`` (``steps_per_round`` or ``full_steps``; 0 = count epochs instead)."""
    if config.min_steps <= 0 and config.steps_per_label <= 0:
        return fixed
    return step_budget(n_labelled, config.min_steps, config.steps_per_label)


def run_reference(config: SimConfig, data: SimData, seed: int, out: Path) -> dict[str, Any]:
    """Train on every label of the pool for ``full_steps`` steps, or ``full_epochs`` epochs when it is 0
    (same initial weights as the seed's AL runs); returns (and caches in ``reference/seed<s>.json``)
    ``{"metrics": evaluate(...), "seconds": t}``."""
    path = out / "reference" / f"seed{seed}.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("settings") == settings_key(config):
            return stored
    start = time.perf_counter()
    model = _build_model(config, data.modalities, seed)
    steps, epochs = _schedule(budget_steps(config, len(data.pool), config.full_steps), config.full_epochs)
    loader = _train_loader(data.pool, data.modalities, config.batch_size, seed, steps, config.sampling)
    fit(model, loader, _train_config(config, epochs, seed, False))
    metrics = evaluate(model, make_loader(data.val, data.modalities, config.batch_size))
    result = {"settings": settings_key(config), "metrics": metrics, "seconds": time.perf_counter() - start}
    _write_json(path, result)
    return result


def _strategy_options(config: SimConfig, name: str, seed: int, rnd: int,
                      class_names: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
    """Options for ``get_strategy``: ``mc_samples``, a per-(seed, round) ``seed`` and the data's
    ``class_names`` where the factory takes them, then the config's ``strategy_options[name]``."""
    params = inspect.signature(STRATEGIES[name]).parameters
    opts: dict[str, Any] = {}
    if "class_names" in params and class_names:
        opts["class_names"] = dict(class_names)
    if "mc_samples" in params:
        opts["mc_samples"] = config.mc_samples
    if "seed" in params:
        opts["seed"] = seed * 1000 + rnd
    opts.update(config.strategy_options.get(name, {}))
    return opts


def _pool_samples(data: SimData, pool: LabelPool) -> list[Sample]:
    return [pool.apply(s, i) for i, s in enumerate(data.pool)]


class _Run:
    """State of one (strategy, seed) run; see the module docstring."""

    def __init__(self, config: SimConfig, data: SimData, name: str, seed: int, out: Path) -> None:
        self.config, self.data, self.name, self.seed = config, data, name, seed
        self.dir = out / "runs" / name / f"seed{seed}"
        self.out = out
        self.names = list(data.modalities)
        self.model = _build_model(config, data.modalities, seed)
        if config.pretrain_steps > 0:
            pretrained_start(config, data, self.model, seed, out, settings_key(config))
        probe_opts = _strategy_options(config, name, seed, 0, data.class_names)
        self.probe = get_strategy(name, **probe_opts) if name != "ll4al" else None
        self.committee = bool(self.probe is not None and self.probe.needs.committee)
        self.hook: nn.Module | None = None
        if name == "ll4al":
            self.model.eval()  # a probe of one image: BatchNorm cannot run it in train mode
            with torch.no_grad():
                width = config.image_width or config.image_size
                pooled = self.model(torch.zeros(1, 3, config.image_size, width)).pooled
            self.model.train()
            if pooled is None:
                raise ValueError("strategy 'll4al': the network gives no pooled features")
            self.hook = make_ll4al_extra_loss(LossPredictionModule(int(pooled.shape[1])), data.modalities)
        self.initial = {"model": copy.deepcopy(self.model.state_dict())}
        if self.hook is not None:
            self.initial["hook"] = copy.deepcopy(self.hook.module.state_dict())
        self.pool = LabelPool(len(data.pool), self.names)
        self.rows: list[dict[str, Any]] = []
        self.strategy_state: dict[str, Any] = {}
        self.weights: dict[str, dict[str, float]] | None = None
        self.done = -1  # last finished round
        self.checkpoint: Path | None = None

    # ---- persistence -------------------------------------------------------------------------
    def load(self) -> None:
        path = self.dir / "state.json"
        if not path.is_file():
            return
        state = json.loads(path.read_text())
        if state.get("settings") != settings_key(self.config):
            raise ValueError(
                f"{self.dir}: holds a run with different settings; use another --out or delete it "
                f"(stored {state.get('settings')}, now {settings_key(self.config)})"
            )
        self.checkpoint = self.dir / state["checkpoint"]
        self.pool = LabelPool.from_dict(state["pool"])
        self.rows = state["rows"]
        self.strategy_state = state["strategy_state"]
        self.weights = state["sample_weights"]
        self.done = int(state["round"])

    def restore_weights(self) -> None:
        """Load the last finished round's checkpoint (only needed when rounds remain to run)."""
        ck = load_checkpoint(self.checkpoint)
        self.model.load_state_dict(ck.model_state)
        if self.hook is not None and "ll4al_state" in ck.extra:
            self.hook.module.load_state_dict(ck.extra["ll4al_state"])

    def reset_weights(self) -> None:
        """Back to the seed's initial weights (network and LL4AL module), for ``retrain``."""
        self.model.load_state_dict(self.initial["model"])
        if self.hook is not None:
            self.hook.module.load_state_dict(self.initial["hook"])

    def save(self, rnd: int) -> None:
        name = f"model_round{rnd}.pt"
        extra = {"ll4al_state": self.hook.module.state_dict()} if self.hook is not None else None
        save_checkpoint(self.dir / name, self.model, epoch=rnd, extra=extra)
        state = {
            "settings": settings_key(self.config), "strategy": self.name, "seed": self.seed, "round": rnd,
            "checkpoint": name, "pool": self.pool.to_dict(), "rows": self.rows,
            "strategy_state": self.strategy_state, "sample_weights": self.weights,
        }  # fmt: skip
        _write_json(self.dir / "state.json", state)
        for old in self.dir.glob("model_round*.pt"):
            if old.name != name:
                old.unlink()

    def _round0_path(self) -> Path | None:
        """Where round 0's shared training lives (None: this run's round 0 is its own, e.g. LL4AL)."""
        if self.hook is not None:
            return None
        return self.out / "round0" / f"seed{self.seed}{'-committee' if self.committee else ''}.pt"

    def train_round0(self) -> None:
        """Train round 0, or load it from another strategy of the seed that trained it with these settings."""
        path = self._round0_path()
        if path is not None and path.is_file():
            ck = load_checkpoint(path)
            if ck.extra.get("settings") == settings_key(self.config):
                self.model.load_state_dict(ck.model_state)
                return
        self.train(0)
        if path is not None:
            save_checkpoint(path, self.model, epoch=0, extra={"settings": settings_key(self.config)})

    # ---- one round ---------------------------------------------------------------------------
    def _strategy(self, rnd: int) -> Strategy:
        opts = _strategy_options(self.config, self.name, self.seed, rnd, self.data.class_names)
        if self.hook is not None:
            opts["module"] = self.hook.module
        strategy = get_strategy(self.name, **opts)
        strategy.load_state(self.strategy_state)  # empty before the first selection (nothing frozen yet)
        return strategy

    def select(self, rnd: int) -> int:
        """Score the pool, buy labels; returns how many new labels were bought."""
        strategy = self._strategy(rnd)
        device = next(self.model.parameters()).device
        loader = make_loader(_pool_samples(self.data, self.pool), self.data.modalities, self.config.batch_size * 2)
        scores = collect_pool_outputs(self.model, loader, strategy, device=device)
        labelled = {m: torch.from_numpy(self.pool.mask[:, j].copy()) for j, m in enumerate(self.names)}
        selection = strategy.select(scores, labelled, self.config.budget)
        self.strategy_state = strategy.state()
        if selection.weights:
            chosen = [self.data.ids[i] for i in selection.by_image()]
            self.weights = merge_weights(self.weights, selection.sample_weights(self.data.ids), chosen)
        return self.pool.label(selection.pairs)

    def train(self, rnd: int) -> None:
        samples = [self.pool.apply(self.data.pool[i], i) for i in self.pool.labelled_images()]
        teacher = None
        if self.config.pseudo_label_weight > 0 and self.config.pseudo_label_teacher == "previous" and rnd > 0:
            teacher = copy.deepcopy(self.model).eval()
        if self.config.retrain and rnd > 0:
            self.reset_weights()
        steps, epochs = _schedule(budget_steps(self.config, len(samples), self.config.steps_per_round),
                                  self.config.epochs_per_round)
        if steps and self.config.step_budget == "labels":
            steps = label_steps(samples, self.names, self.config.sampling, steps)
        config = _train_config(self.config, epochs, self.seed * 1000 + rnd, self.committee)
        loader = _train_loader(
            samples, self.data.modalities, self.config.batch_size, config.seed, steps, self.config.sampling
        )
        unlabelled = None
        if self.config.semi_weight > 0:  # the images without any label: the backend's pool (MTAL_SEMI_WEIGHT)
            labelled = set(self.pool.labelled_images().tolist())
            unlabelled = [self.pool.apply(s, i) for i, s in enumerate(self.data.pool) if i not in labelled]
        fit(self.model, loader, config, sample_weights=self.weights, extra_loss=self.hook, teacher=teacher,
            unlabelled=unlabelled)

    def row(self, rnd: int, reference: Mapping[str, Any], seconds: float) -> dict[str, Any]:
        metrics = evaluate(self.model, make_loader(self.data.val, self.data.modalities, self.config.batch_size))
        scores = task_scores(metrics, reference, self.data.modalities)
        counts = self.pool.counts()
        return {
            "strategy": self.name, "seed": self.seed, "round": rnd, "labels": self.pool.n_labelled,
            "images": int(len(self.pool.labelled_images())),
            **{f"labels_{m}": counts[m] for m in self.names},
            **flat_metrics(metrics, self.data.modalities),
            **{f"score_{m}": v for m, v in scores.items() if m != "multi_task"},
            "mt_score": scores["multi_task"], "seconds": round(seconds, 2),
            **({} if (dsq := mdsq_score(metrics, reference, self.data.modalities)) is None
               else {"mdsq": dsq}),
        }  # fmt: skip

    def run(self, reference: Mapping[str, Any], tick: Tick) -> list[dict[str, Any]]:
        self.load()
        if 0 <= self.done < self.config.rounds:
            self.restore_weights()
        for rnd in range(self.done + 1, self.config.rounds + 1):
            start = time.perf_counter()
            if rnd == 0:
                if self.config.initial_strategy == "typiclust":
                    first = typical_images(self.config, self.data, self.model, self.seed)
                else:
                    first = initial_images(self.config, len(self.data.pool), self.seed)
                self.pool.label_images(first)
                self.train_round0()
            else:
                if self.select(rnd) == 0:
                    tick(f"{self.name} seed {self.seed}: pool fully labelled at round {rnd}")
                self.train(rnd)
            self.rows.append(self.row(rnd, reference, time.perf_counter() - start))
            self.save(rnd)
            tick(f"{self.name} s{self.seed} r{rnd} labels={self.pool.n_labelled} score={self.rows[-1]['mt_score']:.3f}")
        return [r for r in self.rows if r["round"] <= self.config.rounds]


def run_strategy(
    config: SimConfig,
    data: SimData,
    name: str,
    seed: int,
    reference: Mapping[str, Any],
    out: Path,
    tick: Tick | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) strategy ``name`` with ``seed``; returns one row per round 0..rounds.
    ``reference`` is the seed's full-data ``evaluate`` dict; ``tick(message)`` is called after each round."""
    return _Run(config, data, name, seed, out).run(reference, tick or (lambda _msg: None))
