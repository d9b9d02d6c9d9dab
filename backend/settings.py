"""Backend settings: read once from the environment into one frozen, typed object.

Every variable is optional; :meth:`Settings.from_env` raises ``ValueError`` naming the variable when a
value cannot be used (the typed readers: :mod:`backend.env`). See ``docs/backend.md`` for the reference table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.env import EnvReader, SettingsError, off_is_none, parse_pairs, weights_setting

if TYPE_CHECKING:
    from mtal_models.nets.config import NetConfig

__all__ = ["Settings", "SettingsError"]

_DEVICES = ("auto", "cpu", "cuda")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PRETRAINED_HEADS = ("coco",)  # MTAL_PRETRAINED_HEADS values


@dataclass(frozen=True)
class Settings:
    """All backend settings (environment variable in brackets).

    label_studio_url [LABEL_STUDIO_URL]: base URL of Label Studio, used to fetch ``/data/...`` images.
    label_studio_api_key [LABEL_STUDIO_API_KEY]: legacy token or personal access token.
    model_dir [MODEL_DIR]: root of the model store (default ``./models``).
    redis_url [REDIS_URL]: Redis for the training queue; None = embedded (in-process fakeredis).
    port [PORT]: HTTP port (default 9090).
    basic_auth_user / basic_auth_pass [BASIC_AUTH_USER / BASIC_AUTH_PASS]: HTTP basic auth (both or none).
    device [MTAL_DEVICE]: "auto" (CUDA when present), "cpu" or "cuda".
    net_config [MTAL_NET_CONFIG]: network size preset ("tiny", "small", "default").
    backbone [MTAL_BACKBONE]: torchvision's standard "resnet18" / "resnet34" / "resnet50" trunk (the preset
        then sizes only the heads); unset = the preset's trunk. backbone_weights [MTAL_BACKBONE_WEIGHTS]:
        "auto" (ImageNet weights for a standard trunk, else random; random with a warning when they
        cannot be had), "imagenet", a torchvision enum name ("ResNet50_Weights.IMAGENET1K_V2"), a local
        state-dict file, or "none". pretrained_heads [MTAL_PRETRAINED_HEADS]: "coco" = det+seg boxes start
        from torchvision's COCO FCOS for labels matching COCO categories; unset = none. See backend/serving/initial.py.
    strategy [MTAL_STRATEGY]: selection strategy of the active-learning loop: a name of
        mtal_models.strategies.STRATEGIES, or "auto" (default: "mtal_unweighted" for dense-only configs,
        "partal_image" for a single modality, "boxmask" for configs with boxes).
    train_threshold [MTAL_TRAIN_THRESHOLD]: labels (per modality, summed) since the last run that
        trigger the next one (default 10; 0 = only "Start Training"); /setup's extra_params
        {"train_threshold": N} overrides it per project.
    image_size [MTAL_IMAGE_SIZE]: the network input's shorter side in pixels, a multiple of 32
        (default 384); the aspect ratio is kept (:mod:`mtal_models.data.geometry`).
    image_max_size [MTAL_IMAGE_MAX_SIZE]: cap of the input's longer side (default: 1024, or
        MTAL_IMAGE_SIZE when that is larger); must be >= MTAL_IMAGE_SIZE.
    allow_hosts [MTAL_ALLOW_HOSTS]: comma list of extra hosts images may be fetched from.
    dense_fields [MTAL_DENSE_FIELDS]: "modality=task_data_key" pairs for sensor ground truth.
    cache_dir [MTAL_CACHE_DIR]: on-disk image cache (default <MODEL_DIR>/.image-cache: Label Studio asks
        for the same tasks again after every version, and its upload URLs never change; "off" = none).
    initial_checkpoint [MTAL_INITIAL_CHECKPOINT]: checkpoint used as a project's first version.
    predict_batch_size [MTAL_PREDICT_BATCH]: images per forward pass in /predict and the ranking (default 32).
    seed [MTAL_SEED]: seed of the untrained initial network (default 0).
    log_level [LOG_LEVEL]: Python logging level (default INFO).
    Training / ranking (read by the RQ jobs):
    train_epochs [MTAL_TRAIN_EPOCHS] (10), train_batch_size [MTAL_TRAIN_BATCH] (8),
    train_lr [MTAL_TRAIN_LR] (1e-3), val_fraction [MTAL_VAL_FRACTION] (0.1, in [0, 1)),
    mtpsl_weight [MTAL_MTPSL_WEIGHT] (0.1, >= 0; cross-task consistency term),
    clusters [MTAL_CLUSTERS] (8; 0 = no prediction clusters), cluster_push_limit
    [MTAL_CLUSTER_PUSH_LIMIT] (1000: Label Studio 1.23 stores a prediction's cluster only through
    one POST per prediction, so larger rankings are pushed in bulk without clusters),
    set_sampling [MTAL_SET_SAMPLING] (true: set the project's sampling to "Uncertainty sampling"),
    keep_prediction_versions [MTAL_KEEP_PREDICTION_VERSIONS] (1: after a ranking, the predictions of
    MTAL's other versions of the project are deleted from Label Studio, because LS 1.23's editor lists
    every version's prediction of a task opened from the Data Manager; N: the new one and the N - 1
    newest before it are kept; 0 = delete nothing).
    rank_max_tasks [MTAL_RANK_MAX_TASKS] (0 = off; >= 0): each ranking scores a random subset of this many
    unlabelled tasks (seeded by MTAL_SEED and the version number), as baal's ``max_sample``; the others
    keep their last prediction and stored score (:func:`backend.loop.rank_pass.rank_subset`).
    rank_chunk_tasks [MTAL_RANK_CHUNK_TASKS] (500, >= 1): a ranking of more tasks is fanned out over the
    queue in chunk jobs of this many tasks and one merge job (:mod:`backend.loop.rank_fanout`); a ranking
    of this many tasks or fewer runs in one job.
    Limits (hostile input; see README "Reliability and security"):
    max_body_bytes [MTAL_MAX_BODY_BYTES] (32 MiB): largest request body, checked before reading it;
    body_read_timeout [MTAL_BODY_READ_TIMEOUT] (30 s): longest time to receive a request body;
    max_predict_tasks [MTAL_MAX_PREDICT_TASKS] (1000): tasks one /predict computes at most; a larger
    request (Retrieve Predictions on the whole project) gets the others' predictions pushed through Label
    Studio's API in the background (:mod:`backend.web.predict_batch`);
    predict_deadline_s [MTAL_PREDICT_DEADLINE_S] (60 s, > 0): a /predict starts no further slice of its
    tasks past this (Label Studio waits 100 s; gateways cut at ~90 s): the rest go to the background too;
    predict_fetch_s [MTAL_PREDICT_FETCH_S] (20 s, > 0): deadline for fetching a /predict's images (all
    fetched concurrently; a task whose image is not in by then gets an empty result, its reason logged);
    max_projects [MTAL_MAX_PROJECTS] (1000, >= 1): projects the model store holds (a /setup for one more
    is a 409); unpublished_models [MTAL_UNPUBLISHED_MODELS] (4, >= 1): initial networks kept in memory
    (least recently used first out) for /predict calls whose project or labeling config /setup has not
    published (nothing is stored for them).
    Fixed limits: 40 M pixels per image or region raster (``backend.labelstudio.regions.MAX_PIXELS``), 2000 results
    per annotation (``backend.labelstudio.convert.MAX_REGIONS``), 32 control tags and 1000 labels per labeling config,
    1 M characters per config, no DOCTYPE (``backend.labelstudio.label_config``), 10000 annotations/ids/results per
    webhook event (``backend.loop.events.MAX_EVENT_ITEMS``).
    Prefill (what Label Studio shows, see backend/serving/prefill.py): prefill_per_class
    [MTAL_PREFILL_PER_CLASS] (false: one box per object across classes; true: the detector's
    per-class boxes), prefill_min_area [MTAL_PREFILL_MIN_AREA] (0.002: mask components under this
    share of the image's pixels take the surrounding class; 0 = keep all), prefill_polygon_tolerance
    [MTAL_PREFILL_POLYGON_TOLERANCE] (1.0: predicted polygons are simplified so that no vertex moves more
    than this many pixels of the original image, ``cv2.approxPolyDP``; 0 = one vertex per boundary pixel).
    worker_nice [MTAL_WORKER_NICE] (10, 0..19): how much lower the CPU priority of the thread that runs
    the jobs is (the embedded worker thread, or ``python -m backend.loop.worker``; Linux), so a training run
    on the same machine cannot slow the answers to Label Studio's webhooks and predictions; 0 = as the
    server.
    lease_s [MTAL_RUN_LEASE_S] (60 s, > 0): a run's lease in Redis, renewed every quarter of it; a run
    whose worker died is taken over by the next trigger this long after its last renewal.
    quality_gate [MTAL_QUALITY_GATE] (0.5, in [0, 1]; 0 = off): a new version whose validation score
    (the mean over modalities of mIoU / mAP / 1 - error) is below this fraction of its parent's stays a
    candidate: it is stored and listed, but the current version keeps serving and ranking.
    ls_retries [MTAL_LS_RETRIES] (4, >= 0): attempts after the first when Label Studio is unreachable
    during a run, with exponential backoff from ls_backoff_s [MTAL_LS_BACKOFF_S] (2 s, doubling, capped at 60 s).
    Unlabelled pool (backend/serving/pool.py: the images semi-supervised training, the cold-start pretrain
    and ranking share): pool_max_images [MTAL_POOL_MAX_IMAGES] (2000, >= 0; 0 = no pool): tasks without a
    label cached at the network's input size, a seeded random subset when there are more;
    pool_max_mb [MTAL_POOL_MAX_MB] (2048, >= 1): disk bound of one project's pool in MiB.
    pretrain_minutes [MTAL_PRETRAIN_MINUTES] (0 = off; 0..360): cold start (backend/loop/pretrain_round.py):
    when a project without a trained version is set up, or "Start Training" is pressed before any label,
    a job trains the network's trunk on the project's unlabelled images (dense SimSiam) for at most this
    many minutes in all (resumes included), publishes the result as a version marked "pretrained" and
    ranks the tasks by TypiClust on its features. Off by default: on CamVid at 4-12 CPU minutes the
    pretrained start scored 0.94-0.98x the random start's mIoU at 10 labels (docs/training.md).
    semi_weight [MTAL_SEMI_WEIGHT] (0, >= 0; 0 = off): weight of the semi-supervised term of every training
    run (mtal_models/training/semi.py: a Mean Teacher's confident pseudo-labels on strong views of the
    pool's images); > 0 makes the train job fill the pool and learn from it. Off by default: on CamVid at
    CPU budgets it scored below supervised training (docs/training.md).
    """

    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    model_dir: Path = Path("models")
    redis_url: str | None = None
    port: int = 9090
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    device: str = "auto"
    net_config: str = "small"
    backbone: str | None = None
    backbone_weights: str = "auto"
    pretrained_heads: str | None = None
    strategy: str = "auto"
    train_threshold: int = 10
    image_size: int = 384
    image_max_size: int = 1024
    allow_hosts: tuple[str, ...] = ()
    dense_fields: dict[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None
    initial_checkpoint: Path | None = None
    predict_batch_size: int = 32
    seed: int = 0
    log_level: str = "INFO"
    train_epochs: int = 10
    train_batch_size: int = 8
    train_lr: float = 1e-3
    val_fraction: float = 0.1
    mtpsl_weight: float = 0.1
    clusters: int = 8
    cluster_push_limit: int = 1000
    set_sampling: bool = True
    keep_prediction_versions: int = 1
    rank_max_tasks: int = 0
    rank_chunk_tasks: int = 500
    worker_nice: int = 10
    max_body_bytes: int = 32 * 1024 * 1024
    body_read_timeout: float = 30.0
    max_predict_tasks: int = 1000
    predict_fetch_s: float = 20.0
    predict_deadline_s: float = 60.0
    max_projects: int = 1000
    unpublished_models: int = 4
    prefill_per_class: bool = False
    prefill_min_area: float = 0.002
    prefill_polygon_tolerance: float = 1.0
    lease_s: float = 60.0
    quality_gate: float = 0.5
    ls_retries: int = 4
    ls_backoff_s: float = 2.0
    pool_max_images: int = 2000
    pool_max_mb: int = 2048
    pretrain_minutes: float = 0.0
    semi_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.device not in _DEVICES:
            raise SettingsError(f"MTAL_DEVICE must be one of {_DEVICES}, got {self.device!r}")
        if not 1 <= self.port <= 65535:
            raise SettingsError(f"PORT must be in 1..65535, got {self.port}")
        if self.image_size < 32 or self.image_size % 32:
            raise SettingsError(f"MTAL_IMAGE_SIZE must be a positive multiple of 32, got {self.image_size}")
        if self.image_max_size < self.image_size:
            raise SettingsError(f"MTAL_IMAGE_MAX_SIZE ({self.image_max_size}) must be >= MTAL_IMAGE_SIZE "
                                f"({self.image_size})")
        from mtal_models.strategies import STRATEGIES  # the registry, loaded only when settings are checked

        if self.strategy != "auto" and self.strategy not in STRATEGIES:
            raise SettingsError(f"MTAL_STRATEGY must be 'auto' or one of {sorted(STRATEGIES)}, got {self.strategy!r}")
        if self.train_threshold < 0:
            raise SettingsError(f"MTAL_TRAIN_THRESHOLD must be >= 0, got {self.train_threshold}")
        if self.keep_prediction_versions < 0:
            raise SettingsError(f"MTAL_KEEP_PREDICTION_VERSIONS must be >= 0, got {self.keep_prediction_versions}")
        if self.rank_max_tasks < 0:
            raise SettingsError(f"MTAL_RANK_MAX_TASKS must be >= 0 (0 = score every task), got {self.rank_max_tasks}")
        if self.rank_chunk_tasks < 1:
            raise SettingsError(f"MTAL_RANK_CHUNK_TASKS must be >= 1 (tasks per chunk), got {self.rank_chunk_tasks}")
        if not 0 <= self.prefill_min_area < 1:
            raise SettingsError(f"MTAL_PREFILL_MIN_AREA must be in [0, 1), got {self.prefill_min_area}")
        if not 0 <= self.prefill_polygon_tolerance <= 100:
            raise SettingsError(f"MTAL_PREFILL_POLYGON_TOLERANCE must be in [0, 100] pixels, "
                                f"got {self.prefill_polygon_tolerance}")
        if not 0 <= self.worker_nice <= 19:
            raise SettingsError(f"MTAL_WORKER_NICE must be in 0..19, got {self.worker_nice}")
        if self.predict_batch_size < 1:
            raise SettingsError(f"MTAL_PREDICT_BATCH must be >= 1, got {self.predict_batch_size}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        for name, value in (
            ("MTAL_TRAIN_EPOCHS", self.train_epochs),
            ("MTAL_TRAIN_BATCH", self.train_batch_size),
            ("MTAL_CLUSTER_PUSH_LIMIT", self.cluster_push_limit),
        ):
            if value < 1:
                raise SettingsError(f"{name} must be >= 1, got {value}")
        if self.max_body_bytes < 1024 or not self.body_read_timeout > 0 or self.max_predict_tasks < 1:
            raise SettingsError(
                "MTAL_MAX_BODY_BYTES must be >= 1024, MTAL_BODY_READ_TIMEOUT > 0 and MTAL_MAX_PREDICT_TASKS >= 1"
            )
        if not self.predict_deadline_s > 0:
            raise SettingsError(f"MTAL_PREDICT_DEADLINE_S must be > 0, got {self.predict_deadline_s}")
        if not self.predict_fetch_s > 0 or self.max_projects < 1 or self.unpublished_models < 1:
            raise SettingsError("MTAL_PREDICT_FETCH_S must be > 0, MTAL_MAX_PROJECTS and MTAL_UNPUBLISHED_MODELS >= 1")
        if not self.lease_s > 0 or not 0 <= self.quality_gate <= 1:
            raise SettingsError("MTAL_RUN_LEASE_S must be > 0 and MTAL_QUALITY_GATE in [0, 1]")
        if self.ls_retries < 0 or self.ls_backoff_s < 0:
            raise SettingsError("MTAL_LS_RETRIES and MTAL_LS_BACKOFF_S must be >= 0")
        if self.pool_max_images < 0:
            raise SettingsError(f"MTAL_POOL_MAX_IMAGES must be >= 0 (0 = no pool), got {self.pool_max_images}")
        if self.pool_max_mb < 1:
            raise SettingsError(f"MTAL_POOL_MAX_MB must be >= 1 (MiB of disk per project), got {self.pool_max_mb}")
        if not 0 <= self.pretrain_minutes <= 360:  # also refuses NaN; 360: the jobs' 6 h RQ timeout
            raise SettingsError(f"MTAL_PRETRAIN_MINUTES must be in [0, 360] (0 = off), got {self.pretrain_minutes}")
        if not math.isfinite(self.semi_weight) or self.semi_weight < 0:
            raise SettingsError(f"MTAL_SEMI_WEIGHT must be a finite number >= 0 (0 = off), got {self.semi_weight}")
        if not self.train_lr > 0:
            raise SettingsError(f"MTAL_TRAIN_LR must be > 0, got {self.train_lr}")
        if not 0 <= self.val_fraction < 1:
            raise SettingsError(f"MTAL_VAL_FRACTION must be in [0, 1), got {self.val_fraction}")
        if self.mtpsl_weight < 0 or self.clusters < 0:
            raise SettingsError("MTAL_MTPSL_WEIGHT and MTAL_CLUSTERS must be >= 0")
        if self.log_level not in _LEVELS:
            raise SettingsError(f"LOG_LEVEL must be one of {_LEVELS}, got {self.log_level!r}")
        from mtal_models.nets.config import CONFIGS

        if self.net_config not in CONFIGS:
            raise SettingsError(f"MTAL_NET_CONFIG must be one of {sorted(CONFIGS)}, got {self.net_config!r}")
        problem = self.weights_problem()
        if problem:
            raise SettingsError(problem)

    def weights_problem(self) -> str | None:
        """The reason MTAL_BACKBONE, MTAL_BACKBONE_WEIGHTS and MTAL_PRETRAINED_HEADS cannot work together
        (None = fine); :meth:`__post_init__` raises it. The core's pretrained table is imported here, lazily."""
        from mtal_models.nets.pretrained import STANDARD_LAYERS, is_standard, with_weights

        if self.backbone is not None and self.backbone not in STANDARD_LAYERS:
            return f"MTAL_BACKBONE must be one of {sorted(STANDARD_LAYERS)}, got {self.backbone!r}"
        if self.pretrained_heads is not None and self.pretrained_heads not in PRETRAINED_HEADS:
            return (f"MTAL_PRETRAINED_HEADS must be one of {list(PRETRAINED_HEADS)} or unset, "
                    f"got {self.pretrained_heads!r}")
        if self.pretrained_heads == "coco":
            if self.backbone not in (None, "resnet50"):
                return f"MTAL_PRETRAINED_HEADS=coco loads torchvision's ResNet-50 detector: MTAL_BACKBONE must be " \
                       f"resnet50 or unset, got {self.backbone!r}"
            if self.backbone_weights != "auto":
                return ("MTAL_PRETRAINED_HEADS=coco takes the trunk from the COCO detector: "
                        "leave MTAL_BACKBONE_WEIGHTS=auto")
        if self.backbone_weights == "auto":
            return None
        trunk = self.trunk_config()
        try:
            with_weights(trunk, self.backbone_weights)
        except ValueError as e:
            if not is_standard(trunk):
                return f"MTAL_BACKBONE_WEIGHTS={self.backbone_weights}: {e}. Set MTAL_BACKBONE (resnet18, " \
                       f"resnet34, resnet50) for torchvision's standard trunk; MTAL_NET_CONFIG then sizes the heads"
            return f"MTAL_BACKBONE_WEIGHTS={self.backbone_weights}: {e}"
        return None

    def trunk_config(self) -> NetConfig:
        """MTAL_NET_CONFIG's preset with torchvision's standard trunk when MTAL_BACKBONE names one
        (``coco`` heads imply resnet50)."""
        from mtal_models.nets.config import get_config
        from mtal_models.nets.pretrained import standard_trunk

        base = get_config(self.net_config)
        name = self.backbone or ("resnet50" if self.pretrained_heads == "coco" else None)
        return standard_trunk(base, name) if name else base

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user)

    def torch_device(self) -> str:
        """The device string for torch: "auto" resolves to "cuda" when available, else "cpu"."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default ``os.environ``); empty strings count as unset."""

        reader = EnvReader(env)
        get, get_int, get_float, get_bool, get_path = (reader.get, reader.int, reader.float, reader.bool,
                                                       reader.path)

        url = get("LABEL_STUDIO_URL")
        if url is not None and not url.startswith(("http://", "https://")):
            raise SettingsError(f"LABEL_STUDIO_URL must start with http:// or https://, got {url!r}")
        checkpoint = get_path("MTAL_INITIAL_CHECKPOINT")
        if checkpoint is not None and not checkpoint.is_file():
            raise SettingsError(f"MTAL_INITIAL_CHECKPOINT: no such file {str(checkpoint)!r}")
        model_dir = get_path("MODEL_DIR") or Path("models")
        cache = get("MTAL_CACHE_DIR")
        if cache is None:
            cache_dir: Path | None = model_dir / ".image-cache"  # "." keeps it apart from project ids
        elif cache.lower() in ("off", "none", "0", "false"):
            cache_dir = None
        else:
            cache_dir = get_path("MTAL_CACHE_DIR")
        return cls(
            label_studio_url=url.rstrip("/") if url else None,
            label_studio_api_key=get("LABEL_STUDIO_API_KEY"),
            model_dir=model_dir,
            redis_url=get("REDIS_URL"),
            port=get_int("PORT", 9090),
            basic_auth_user=get("BASIC_AUTH_USER"),
            basic_auth_pass=get("BASIC_AUTH_PASS"),
            device=(get("MTAL_DEVICE") or "auto").lower(),
            net_config=get("MTAL_NET_CONFIG") or "small",
            backbone=(get("MTAL_BACKBONE") or "").lower() or None,
            backbone_weights=weights_setting(get("MTAL_BACKBONE_WEIGHTS")),
            pretrained_heads=off_is_none(get("MTAL_PRETRAINED_HEADS")),
            strategy=get("MTAL_STRATEGY") or "auto",
            train_threshold=get_int("MTAL_TRAIN_THRESHOLD", 10),
            image_size=get_int("MTAL_IMAGE_SIZE", 384),
            image_max_size=get_int("MTAL_IMAGE_MAX_SIZE", max(1024, get_int("MTAL_IMAGE_SIZE", 384))),
            allow_hosts=tuple(h.strip() for h in (get("MTAL_ALLOW_HOSTS") or "").split(",") if h.strip()),
            dense_fields=parse_pairs("MTAL_DENSE_FIELDS", get("MTAL_DENSE_FIELDS")),
            cache_dir=cache_dir,
            initial_checkpoint=checkpoint,
            predict_batch_size=get_int("MTAL_PREDICT_BATCH", 32),
            seed=get_int("MTAL_SEED", 0),
            log_level=(get("LOG_LEVEL") or "INFO").upper(),
            train_epochs=get_int("MTAL_TRAIN_EPOCHS", 10),
            train_batch_size=get_int("MTAL_TRAIN_BATCH", 8),
            train_lr=get_float("MTAL_TRAIN_LR", 1e-3),
            val_fraction=get_float("MTAL_VAL_FRACTION", 0.1),
            mtpsl_weight=get_float("MTAL_MTPSL_WEIGHT", 0.1),
            clusters=get_int("MTAL_CLUSTERS", 8),
            cluster_push_limit=get_int("MTAL_CLUSTER_PUSH_LIMIT", 1000),
            set_sampling=get_bool("MTAL_SET_SAMPLING", True),
            keep_prediction_versions=get_int("MTAL_KEEP_PREDICTION_VERSIONS", 1),
            rank_max_tasks=get_int("MTAL_RANK_MAX_TASKS", 0),
            rank_chunk_tasks=get_int("MTAL_RANK_CHUNK_TASKS", 500),
            worker_nice=get_int("MTAL_WORKER_NICE", 10),
            max_body_bytes=get_int("MTAL_MAX_BODY_BYTES", 32 * 1024 * 1024),
            body_read_timeout=get_float("MTAL_BODY_READ_TIMEOUT", 30.0),
            max_predict_tasks=get_int("MTAL_MAX_PREDICT_TASKS", 1000),
            predict_fetch_s=get_float("MTAL_PREDICT_FETCH_S", 20.0),
            predict_deadline_s=get_float("MTAL_PREDICT_DEADLINE_S", 60.0),
            max_projects=get_int("MTAL_MAX_PROJECTS", 1000),
            unpublished_models=get_int("MTAL_UNPUBLISHED_MODELS", 4),
            prefill_per_class=get_bool("MTAL_PREFILL_PER_CLASS", False),
            prefill_min_area=get_float("MTAL_PREFILL_MIN_AREA", 0.002),
            prefill_polygon_tolerance=get_float("MTAL_PREFILL_POLYGON_TOLERANCE", 1.0),
            lease_s=get_float("MTAL_RUN_LEASE_S", 60.0),
            quality_gate=get_float("MTAL_QUALITY_GATE", 0.5),
            ls_retries=get_int("MTAL_LS_RETRIES", 4),
            ls_backoff_s=get_float("MTAL_LS_BACKOFF_S", 2.0),
            pool_max_images=get_int("MTAL_POOL_MAX_IMAGES", 2000),
            pool_max_mb=get_int("MTAL_POOL_MAX_MB", 2048),
            pretrain_minutes=get_float("MTAL_PRETRAIN_MINUTES", 0.0),
            semi_weight=get_float("MTAL_SEMI_WEIGHT", 0.0),
        )

    def configure_logging(self) -> None:
        """Set the root log level (handlers are left to gunicorn / the caller), secrets redacted."""
        from backend.logs import configure_logging

        configure_logging(self.log_level)
