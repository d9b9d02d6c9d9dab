"""Reading environment variables for :mod:`backend.settings`: typed getters whose errors name the variable,
and the parsers of the settings that are more than a number. Imports nothing of the backend."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["EnvReader", "SettingsError", "off_is_none", "parse_pairs", "weights_setting"]


class SettingsError(ValueError):
    """A setting has a value the backend cannot use; the message names the variable."""


class EnvReader:
    """Typed reads of ``env`` (default ``os.environ``); empty strings count as unset."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = os.environ if env is None else env

    def get(self, name: str) -> str | None:
        value = self.env.get(name)
        return value.strip() if value is not None and value.strip() else None

    def _number(self, name: str, default: Any, kind: type, word: str) -> Any:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            return kind(raw)
        except ValueError:
            raise SettingsError(f"{name} must be {word}, got {raw!r}") from None

    def int(self, name: str, default: int) -> int:
        return self._number(name, default, int, "an integer")

    def float(self, name: str, default: float) -> float:
        return self._number(name, default, float, "a number")

    def bool(self, name: str, default: bool) -> bool:
        raw = self.get(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name} must be true/false, got {raw!r}")

    def path(self, name: str) -> Path | None:
        raw = self.get(name)
        return Path(raw).expanduser() if raw else None


def off_is_none(raw: str | None) -> str | None:
    """Lower-cased value; unset / "none" / "off" / "false" / "0" = None."""
    return None if raw is None or raw.lower() in ("none", "off", "false", "0") else raw.lower()


def weights_setting(raw: str | None) -> str:
    """MTAL_BACKBONE_WEIGHTS: keywords in lower case; a file path must exist (enum names are kept)."""
    if raw is None or raw.lower() in ("auto", "imagenet", "none"):
        return (raw or "auto").lower()
    if "_Weights." in raw:
        return raw
    path = Path(raw).expanduser()
    if not path.is_file():
        raise SettingsError(f"MTAL_BACKBONE_WEIGHTS: no such file {str(path)!r} (and not auto / imagenet / none / "
                            "a torchvision weights name such as ResNet50_Weights.IMAGENET1K_V2)")
    return str(path)


def parse_pairs(name: str, raw: str | None) -> dict[str, str]:
    """"a=b,c=d" -> {"a": "b", "c": "d"}; a bare "a" means "a=a"."""
    out: dict[str, str] = {}
    for item in (raw or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), (value.strip() if sep else key.strip())
        if not key or not value:
            raise SettingsError(f"{name}: entries must look like modality=task_key, got {item!r}")
        if key in out:
            raise SettingsError(f"{name}: modality {key!r} listed twice")
        out[key] = value
    return out
