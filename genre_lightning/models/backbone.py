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

from genre_lightning.utils.errors import ConfigError, UserFacingError

# Names timm.create_model resolves itself, outside its registry: a Hub repo or a local folder.
HUB_AND_LOCAL_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


def check_backbone_name(name: str) -> None:
    if timm.is_model(name) or name.startswith(HUB_AND_LOCAL_PREFIXES):
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

    ``weights`` (a timm-format ``.safetensors``/``.pth`` file, or a folder holding one named after the
    backbone) wins over ``pretrained``; ``pretrained=True`` without it downloads from the Hugging Face Hub.
    """
    check_backbone_name(name)
    if weights:
        path = weights_file(Path(weights).expanduser(), name)
        if not path.is_file():
            raise ConfigError(
                "model.weights",
                weights,
                f"an existing timm-format .safetensors or .pth file, or a folder with {name}.safetensors "
                f"(or {name}.<tag>.safetensors / .pth)",
            )
        try:
            model = timm.create_model(
                name,
                pretrained=True,
                num_classes=num_classes,
                pretrained_cfg_overlay={"file": str(path.resolve())},
                **kwargs,
            )
        except RuntimeError as err:  # a tensor of another shape: the file is another architecture
            mismatch = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), None)
            if mismatch is None:
                raise
            raise ConfigError("model.weights", weights, f"timm weights for {name} ({mismatch})") from None
        check_weights_match(model, path, weights)
        return model
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
    except (OSError, ConnectionError, TimeoutError) as err:  # huggingface_hub's offline errors are OSErrors
        raise UserFacingError(
            f"could not download pretrained weights for {name!r} from the Hugging Face Hub "
            f"({type(err).__name__}); pass model.weights=/path/to/weights.safetensors or model.pretrained=false"
        ) from None


def weights_file(path: Path, name: str) -> Path:
    """``path`` itself, or in a folder of weights the file named after the backbone (``name.safetensors``,
    ``name.in1k.safetensors``, ``name.pth``): one ``model.weights`` serves a search over backbones."""
    if not path.is_dir():
        return path
    for pattern in (f"{name}.safetensors", f"{name}.pth", f"{name}.*.safetensors", f"{name}.*.pth"):
        found = sorted(path.glob(pattern))
        if found:
            return found[0]
    return path / f"{name}.safetensors"


def check_weights_match(model: nn.Module, path: Path, weights: str) -> None:
    """timm loads a file non-strictly when the head is replaced, so a file of another architecture
    (or a Lightning checkpoint) would leave layers random without a word: compare the names."""
    classifier = f"{model.pretrained_cfg.get('classifier', '')}."

    def backbone_names(names: Any) -> set[str]:
        return {n for n in names if not n.startswith(classifier) and not n.endswith("num_batches_tracked")}

    # timm's own reader, the one its pretrained loading used for this file (unwraps state_dict/model
    # entries, strips a DataParallel "module." prefix; torch>=2.6 loads .pth weights_only).
    found = backbone_names(timm.models.load_state_dict(str(path)))
    expected = backbone_names(model.state_dict())
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        hint = (
            " (a Lightning checkpoint? resume it with ckpt_path=)" if any(n.startswith("net.") for n in found) else ""
        )
        raise ConfigError(
            "model.weights",
            weights,
            f"timm weights for {model.default_cfg.get('architecture', 'this backbone')}: {len(missing)} of "
            f"{len(expected)} tensors missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]}){hint}",
        )


def resolve_data_config(model: nn.Module, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The backbone's own preprocessing (input size, interpolation, mean, std, crop), plus overrides."""
    config = dict(resolve_model_data_config(model))
    for key, value in (overrides or {}).items():
        if value is not None:
            config[key] = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
    return config
