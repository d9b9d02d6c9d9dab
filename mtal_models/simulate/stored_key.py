"""The key of a stored simulator round: the settings a stored round depends on, compared on resumption so a
changed setting reruns the round instead of mixing results."""

from __future__ import annotations

from typing import Any

from mtal_models.simulate.config import SimConfig

__all__ = ["settings_key"]

# Fields that change the meaning of stored rounds; the others (rounds, strategies, seeds, device ...)
# may change between a run and its resumption.
_RESULT_FIELDS = (
    "dataset", "path", "train_split", "val_split", "modalities", "image_size", "image_width", "n_images", "val_images",
    "initial", "budget", "net", "epochs_per_round", "full_epochs", "batch_size", "lr", "mc_samples", "data_seed",
    "steps_per_round", "retrain", "full_steps", "substitution_prob", "sampling", "step_budget",
    "pseudo_label_weight", "pseudo_label_confidence", "pseudo_label_teacher", "mtpsl_weight", "semi_weight",
    "pretrain_steps", "initial_strategy", "semi_class_share", "min_steps", "steps_per_label",
)  # fmt: skip

# Result fields added after runs were stored, with the value those runs had: left out of the key at that
# value, so the stored runs stay valid.
_LATER_DEFAULTS = {
    "step_budget": "steps", "pseudo_label_weight": 0.0, "pseudo_label_confidence": 0.9,
    "pseudo_label_teacher": "self", "mtpsl_weight": 0.0, "image_width": 0, "semi_weight": 0.0,
    "pretrain_steps": 0, "initial_strategy": "random", "semi_class_share": 0.0, "min_steps": 0,
    "steps_per_label": 0.0,
}  # fmt: skip


def settings_key(config: SimConfig) -> dict[str, Any]:
    """The fields a stored round depends on (compared on resumption)."""
    d = config.to_dict()
    if not d["semi_weight"]:  # the class share means nothing without the term: supervised runs stay valid
        d["semi_class_share"] = _LATER_DEFAULTS["semi_class_share"]
    return {k: d[k] for k in _RESULT_FIELDS if k not in _LATER_DEFAULTS or d[k] != _LATER_DEFAULTS[k]}
