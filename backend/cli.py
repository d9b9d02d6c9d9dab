"""The ``mtal`` command: the core simulator CLI (:mod:`mtal_models.simulate.cli`) with the datasets that
need the backend composed in. ``mtal_models`` never imports Label Studio code, so the Label Studio export
reader (:mod:`backend.labelstudio.export`) is registered here, as ``--dataset ls-export``::

    mtal simulate --config ls-export --data-dir my-export --out runs/mine

Pool and held-out set: ``val_images`` of the export's labelled tasks are held out, drawn with
``data_seed`` (as for Penn-Fudan); the pool is the rest (first ``n_images``, 0 = all). Images and labels
are resized to ``image_size`` x ``image_size`` (labels nearest, as the backend does).
"""

from __future__ import annotations

from collections.abc import Sequence

from backend.labelstudio.export import read_ls_export
from mtal_models.data import Sample, resize
from mtal_models.data.photos import pennfudan_split
from mtal_models.simulate.cli import main as core_main
from mtal_models.simulate.config import SimConfig
from mtal_models.simulate.sim_data import SimData, restrict_labels, select_modalities

__all__ = ["READERS", "load_ls_export", "main"]


def load_ls_export(config: SimConfig) -> SimData:
    """The simulator's data from a Label Studio export folder (``config.path``)."""
    if not config.path:
        raise ValueError("dataset 'ls-export' needs the export folder: --data-dir (SimConfig.path)")
    export = read_ls_export(config.path)
    where = f"the Label Studio export at {config.path}"
    mods = select_modalities(export.schema.modalities, config.modalities, where)
    names = list(mods)
    by_id = {s.id: s for s in export.samples if any(s.is_present(m) for m in names)}
    if len(by_id) < config.val_images + 2:
        raise ValueError(f"{where}: {len(by_id)} tasks label {names}; need >= 2 pool images plus val_images "
                         f"= {config.val_images} held out (lower --val-images)")
    pool_ids, val_ids = pennfudan_split(list(by_id), config.val_images, config.data_seed)
    if config.n_images:
        pool_ids = pool_ids[: config.n_images]
    size = config.image_size

    def load(ids: list[str]) -> list[Sample]:
        return [resize(restrict_labels(by_id[i], names), mods, size, size) for i in ids]

    classes = {m: c for m, c in export.class_names().items() if m in mods}
    return SimData(load(pool_ids), load(val_ids), mods, classes)


READERS = {"ls-export": load_ls_export}


def main(argv: Sequence[str] | None = None) -> int:
    """``mtal simulate ...`` with every reader above registered."""
    return core_main(argv, readers=READERS)


if __name__ == "__main__":
    raise SystemExit(main())
