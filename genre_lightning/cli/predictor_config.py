"""The ``Predictor`` of genre-predict and genre-serve, from the config keys they share
(``ckpt_path``, ``device``, ``threshold``, ``backend``, ``precision``, ``threads``, ``cache_dir``;
genre-predict also has ``channels_last``, ``freeze`` and ``onnx_export``)."""

from __future__ import annotations

from omegaconf import DictConfig

from genre_lightning.inference.batch import resolve_device
from genre_lightning.inference.predictor import Predictor


def predictor_from_cfg(cfg: DictConfig) -> Predictor:
    """Load ``cfg.ckpt_path`` for prediction as the command's config asks; keys a command does not
    have keep ``Predictor.from_checkpoint``'s defaults."""
    return Predictor.from_checkpoint(
        cfg.ckpt_path,
        resolve_device(cfg.device),
        threshold=cfg.get("threshold"),
        channels_last=cfg.get("channels_last", True),
        backend=cfg.backend,
        precision=str(cfg.precision),
        threads=cfg.threads,
        cache_dir=cfg.cache_dir,
        freeze=cfg.get("freeze", False),
        onnx_export=cfg.get("onnx_export", "background"),
        tta_hflip=cfg.get("tta_hflip"),
        tta=cfg.get("tta"),
    )
