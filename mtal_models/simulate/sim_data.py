"""What the simulator holds in memory: :class:`SimData` (a pool with oracle labels and a held-out set),
and the two helpers every dataset loader uses to keep only the wanted modalities.

A leaf of ``mtal_models.simulate``: the loaders (:mod:`~mtal_models.simulate.data`,
:mod:`~mtal_models.simulate.photos`) import it, it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mtal_models.data import LabelPool, Sample
from mtal_models.modalities import ModalitySpec

__all__ = ["SimData", "restrict_labels", "select_modalities"]


@dataclass
class SimData:
    """pool: N samples with every oracle label; val: the held-out samples; modalities: name -> spec;
    class_names: categorical modality -> class names by id, where the dataset names them (BoxMask
    matches detection to segmentation classes by name)."""

    pool: list[Sample]
    val: list[Sample]
    modalities: dict[str, ModalitySpec]
    class_names: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.pool]


def select_modalities(
    available: dict[str, ModalitySpec], wanted: tuple[str, ...], where: str
) -> dict[str, ModalitySpec]:
    """The ``wanted`` modalities of ``available`` (all when empty); ValueError naming ``where`` otherwise."""
    if not wanted:
        return dict(available)
    missing = [m for m in wanted if m not in available]
    if missing:
        raise ValueError(f"SimConfig.modalities: {missing} not offered by {where}; available: {sorted(available)}")
    return {m: available[m] for m in wanted}


def restrict_labels(sample: Sample, names: list[str]) -> Sample:
    """Keep only ``names`` (LabelPool with everything labelled does exactly this)."""
    full = LabelPool(1, names)
    full.label_images([0])
    return full.apply(sample, 0)
