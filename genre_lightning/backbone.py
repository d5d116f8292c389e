"""Build a timm backbone by name, with weights from the hub, a local file, or none.

Every failure a user can cause (a misspelt name, a missing weights file, no network for the
hub) becomes one line that says what to change.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
from timm.data import resolve_model_data_config

from genre_lightning.errors import ConfigError, UserFacingError


def check_backbone_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for the names"
    raise ConfigError("model.backbone", name, f"a timm model name; {hint}")


def create_backbone(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    weights: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` with a new ``num_classes`` head.

    ``weights`` (a timm-format ``.safetensors``/``.pth`` file) wins over ``pretrained``;
    ``pretrained=True`` without it downloads from the Hugging Face Hub.
    """
    check_backbone_name(name)
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError("model.weights", weights, "an existing timm-format .safetensors or .pth file")
        return timm.create_model(
            name,
            pretrained=True,
            num_classes=num_classes,
            pretrained_cfg_overlay={"file": str(path.resolve())},
            **kwargs,
        )
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
    except (OSError, ConnectionError, TimeoutError) as err:  # huggingface_hub's offline errors are OSErrors
        raise UserFacingError(
            f"could not download pretrained weights for {name!r} from the Hugging Face Hub "
            f"({type(err).__name__}); pass model.weights=/path/to/weights.safetensors or model.pretrained=false"
        ) from None


def resolve_data_config(model: nn.Module, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The backbone's own preprocessing (input size, interpolation, mean, std, crop), plus overrides."""
    config = dict(resolve_model_data_config(model))
    for key, value in (overrides or {}).items():
        if value is not None:
            config[key] = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
    return config
