"""Values as plain Python: config values for what goes into a checkpoint (loaded with
``weights_only=True``, which refuses OmegaConf objects), metric values for JSON files."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def to_plain(value: Any) -> Any:
    """OmegaConf containers (also nested in a dict or list) to plain dicts and lists."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_plain(item) for item in value]
    return value


def to_python(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Tensor metric values to floats."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
