"""MTALModel: the per-project model object with Label Studio's familiar class contract.

``setup() -> model_version``, ``predict(tasks, context=None, **kwargs) -> [prediction, ...]`` and
``fit(event, data, **kwargs)``. An instance is cheap (nothing is loaded in ``__init__``); the network
comes from the :class:`~backend.serving.store.ModelStore`, cached there across requests.

Initial version (before any training): ``setup()`` publishes version 1: the checkpoint named by
``MTAL_INITIAL_CHECKPOINT`` when
its modalities match the labeling config, else an untrained network built with ``MTAL_NET_CONFIG``
from a fixed seed (``MTAL_SEED``, deterministic), starting from the pretrained weights that
``MTAL_BACKBONE`` / ``MTAL_BACKBONE_WEIGHTS`` / ``MTAL_PRETRAINED_HEADS`` select (:mod:`backend.serving.initial`;
what it started from is kept in the version's metadata under "start"). When the labeling config changes its modalities,
the next setup makes current the newest stored version built for the new config, or publishes a fresh
initial version (parent = the old one); switching configs back and forth creates no versions.

Only ``setup()`` publishes or switches versions: ``predict()`` never writes to the store nor changes
``CURRENT``. A project /setup has not seen, or a /predict config whose modalities the untrained current
version does not predict, is answered from the initial network that /setup would publish for that config,
held in memory (:mod:`backend.serving.unpublished`, model_version ``mtal-<id>-unpublished-<hash>``);
when the current version is trained, such a /predict is a :class:`ConfigConflict` (HTTP 409): a trained
model is never replaced, not even for one answer, by an untrained one.

Training is not done here: ``fit`` hands the event to a :class:`Trainer` (the queue seam) and returns.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from backend.labelstudio.label_config import ProjectSchema, parse_label_config
from backend.serving.predict import predict_tasks
from backend.serving.prefill import Prefill
from backend.serving.store import LoadedModel, ModelStore, StoreError
from backend.serving.strategy import strategy_for
from backend.serving.unpublished import UnpublishedModels, unpublished_version
from backend.settings import Settings

__all__ = ["ConfigConflict", "MTALModel", "ModelSetupError", "Trainer", "load_schema", "schema_compatible"]

log = logging.getLogger(__name__)
_setup_locks: dict[str, threading.Lock] = {}
_setup_guard = threading.Lock()


class ModelSetupError(ValueError):
    """No network can be built for the project's modalities (answered with 422)."""


class ConfigConflict(ModelSetupError):
    """/predict sent a labeling config whose modalities the trained current version does not predict
    (answered with 409: /predict never replaces a trained model)."""


class Trainer(Protocol):
    """The seam to the training queue: route an event, answer in milliseconds, never train inline."""

    def submit(self, project_id: str, event: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """Handle one webhook event (``ANNOTATION_CREATED``, ``START_TRAINING``, ...) for a project."""
        ...

    def state(self) -> dict[str, Any]:
        """Queue state for /health."""
        ...



@functools.lru_cache(maxsize=64)
def _parse_cached(xml: str, dense: tuple[tuple[str, str], ...]) -> ProjectSchema:
    return parse_label_config(xml, dict(dense) or None)


def load_schema(label_config: str, dense_fields: Mapping[str, str] | None = None) -> ProjectSchema:
    """Parse (cached by text) a labeling config; raises LabelConfigError (ValueError)."""
    return _parse_cached(label_config, tuple(sorted((dense_fields or {}).items())))


def schema_compatible(metadata: Mapping[str, Any], schema: ProjectSchema) -> bool:
    """True when a stored version predicts exactly ``schema``'s modalities with its network type."""
    want = [s.to_dict() for s in schema.modalities.values()]
    return metadata.get("modalities") == want and metadata.get("network") == schema.network


def _model_fits(model: torch.nn.Module, metadata: Mapping[str, Any], schema: ProjectSchema) -> bool:
    """The loaded network predicts exactly the schema's modalities (checked on the network itself)."""
    mods = getattr(model, "modalities", None)
    if isinstance(mods, dict):
        return [s.to_dict() for s in mods.values()] == [s.to_dict() for s in schema.modalities.values()]
    return schema_compatible(metadata, schema)


def _lock_for(project_id: str) -> threading.Lock:
    with _setup_guard:
        return _setup_locks.setdefault(project_id, threading.Lock())


class MTALModel:
    """One Label Studio project's model.

    project_id: LS project id (the part before the dot of ``"<id>.<created_ts>"``);
    label_config: the labeling config XML (None: the one stored by the last /setup).
    """

    def __init__(
        self,
        project_id: str,
        label_config: str | None,
        settings: Settings,
        store: ModelStore,
        trainer: Trainer | None = None,
        fetcher: Any = None,
        unpublished: UnpublishedModels | None = None,
    ) -> None:
        self.project_id = str(project_id)
        store.project_dir(self.project_id)  # validates the id
        self.settings = settings
        self.store = store
        self.trainer = trainer
        self.fetcher = fetcher
        self.unpublished = unpublished if unpublished is not None else UnpublishedModels(settings.unpublished_models)
        self._label_config = label_config

    # ---- schema --------------------------------------------------------------------------------
    @property
    def label_config(self) -> str:
        if self._label_config:
            return self._label_config
        stored = self.store.project_info(self.project_id).get("label_config")
        if not stored:
            raise ValueError(f"project {self.project_id}: no label_config given and none stored by /setup")
        return stored

    @functools.cached_property
    def schema(self) -> ProjectSchema:
        return load_schema(self.label_config, self.settings.dense_fields)

    @property
    def model_version(self) -> str | None:
        return self.store.current(self.project_id)

    # ---- the LS contract -----------------------------------------------------------------------
    def setup(self) -> str:
        """Remember the labeling config and make sure a compatible version exists; returns it. A
        ``MTAL_STRATEGY`` that cannot rank this config is refused here (ModelSetupError, a 422 at /setup)."""
        schema = self.schema
        try:
            strategy_for(self.settings, schema)
        except ValueError as e:
            raise ModelSetupError(f"MTAL_STRATEGY={self.settings.strategy!r}: {e}") from e
        info = self.store.project_info(self.project_id)
        if info.get("label_config") != self.label_config:
            self.store.save_project_info(
                self.project_id, {"label_config": self.label_config, "config_hash": schema.config_hash}
            )
        return self._ensure_version(schema)

    def predict(self, tasks: Sequence[Mapping[str, Any]], context: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
        """One prediction per task, same order (see :func:`backend.serving.predict.predict_tasks`); from the
        current version, or an unpublished initial network (module docstring). Stores nothing."""
        if not tasks:
            return []
        schema = self.schema
        loaded = self.network(schema)
        if self.fetcher is None:
            raise RuntimeError("MTALModel.predict needs an image fetcher")
        return predict_tasks(
            loaded.model,
            schema,
            tasks,
            self.fetcher,
            model_version=loaded.version,
            image_size=self.settings.image_size,
            image_max_size=self.settings.image_max_size,
            device=self.store.device,
            batch_size=self.settings.predict_batch_size,
            ranking=self.store.ranking(self.project_id),
            prefill=Prefill.for_version(self.settings, loaded.metadata),
            fetch_deadline=self.settings.predict_fetch_s,
        )

    def network(self, schema: ProjectSchema | None = None) -> LoadedModel:
        """The network /predict answers from: the current version when it fits ``schema`` (default: the
        project's), else the unpublished initial one; a trained current version that does not fit is a
        :class:`ConfigConflict`."""
        schema = schema or self.schema
        loaded = None
        if self.store.current(self.project_id) is not None:
            loaded = self.store.load_model(self.project_id)
        if loaded is None or not _model_fits(loaded.model, loaded.metadata, schema):
            if loaded is not None and self._has_trained_version():
                raise ConfigConflict(
                    f"project {self.project_id}: the current version {loaded.version} was trained for another "
                    "labeling config (other modalities or labels); /predict does not replace a trained model. "
                    "If the config really changed, POST /setup with the new config (Label Studio does when the "
                    "model is connected again): it switches to the newest version built for that config, or "
                    "publishes a fresh initial one; earlier versions stay in the store (GET /versions)."
                )
            loaded = self._unpublished(schema)
        return loaded

    def fit(self, event: str, data: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Route a webhook event to the trainer (queue); returns what it answered. Never trains here."""
        if self.trainer is None:
            raise RuntimeError(f"project {self.project_id}: this MTALModel has no trainer to route {event} to")
        return self.trainer.submit(self.project_id, event, data)

    # ---- initial version -----------------------------------------------------------------------
    def _has_trained_version(self) -> bool:
        return any(not meta.get("initial") for meta in self.store.list_versions(self.project_id))

    def _ensure_version(self, schema: ProjectSchema) -> str:
        """The current version if it predicts ``schema``; else the newest stored version that does (made
        current: switching configs back and forth creates no versions), else a fresh initial one."""
        with _lock_for(f"{self.store.root}:{self.project_id}"):
            current = self.store.current(self.project_id)
            if current is not None:
                try:
                    if schema_compatible(self.store.metadata(self.project_id, current), schema):
                        return current
                except StoreError:
                    log.error("project %s: metadata of %s unreadable; new version", self.project_id, current)
                for meta in reversed(self.store.list_versions(self.project_id)):
                    if schema_compatible(meta, schema):
                        self.store.set_current(self.project_id, meta["version"])
                        log.warning("project %s: labeling config changed; back to %s, built for it",
                                    self.project_id, meta["version"])
                        return str(meta["version"])
                log.warning("project %s: labeling config changed its modalities; new initial version", self.project_id)
            return self._publish_initial(schema)

    def _unpublished(self, schema: ProjectSchema) -> LoadedModel:
        """The initial network /setup would publish for ``schema``, in memory (shared by projects)."""

        def build() -> LoadedModel:
            net, meta, _ = self._initial_network(schema)
            log.info("unpublished initial network built for config %s (nothing stored)", schema.config_hash[:12])
            return LoadedModel(net.to(self.store.device).eval(), "", meta)

        shared = self.unpublished.get((schema.config_hash, schema.network), build)
        return LoadedModel(shared.model, unpublished_version(self.project_id, schema.config_hash), shared.metadata)

    def _publish_initial(self, schema: ProjectSchema) -> str:
        from mtal_models.training.checkpoint import save_checkpoint

        net, meta, src = self._initial_network(schema)
        if src is not None:
            return self.store.publish(self.project_id, src, meta)
        tmp = self.store.tmp_dir(self.project_id) / f"initial-{threading.get_ident()}.pt"
        save_checkpoint(tmp, net, extra={"mtal": meta})
        return self.store.publish(self.project_id, tmp, meta, move=True)

    def _initial_network(self, schema: ProjectSchema) -> tuple[torch.nn.Module, dict[str, Any], Any]:
        """(network, version metadata, the MTAL_INITIAL_CHECKPOINT file it came from or None) of a fresh
        initial version for ``schema``."""
        from mtal_models.nets.config import get_config
        from mtal_models.training.checkpoint import load_checkpoint

        cfg = get_config(self.settings.net_config)
        meta: dict[str, Any] = {
            "modalities": [s.to_dict() for s in schema.modalities.values()],
            "network": schema.network,
            "config_hash": schema.config_hash,
            "schema": schema.to_dict(),
            "net_config_name": self.settings.net_config,
            "net_config": cfg.to_dict(),
            "image_size": self.settings.image_size,
            "normalization": {},
            "metrics": {},
            "initial": True,
        }
        src = self.settings.initial_checkpoint
        if src is not None:
            try:
                net = load_checkpoint(src, map_location="cpu").model
                if [s.to_dict() for s in net.modalities.values()] == meta["modalities"]:
                    meta["source"] = f"initial checkpoint {src}"
                    return net, meta, src
                log.warning("MTAL_INITIAL_CHECKPOINT %s does not match project %s's modalities", src, self.project_id)
            except Exception as e:
                log.error("MTAL_INITIAL_CHECKPOINT %s unusable (%s); starting untrained", src, e)
        from backend.serving.initial import build_initial

        try:
            net, start = build_initial(self.settings, schema)
        except ValueError as e:  # incl. requested pretrained weights that are unavailable or do not load
            raise ModelSetupError(f"cannot build the initial network {schema.network!r}: {e}") from e
        meta["net_config"] = net.config.to_dict()
        meta["start"] = start.to_dict()
        meta["source"] = f"untrained (seed {self.settings.seed}; start: {start.weights})"
        return net, meta, None
