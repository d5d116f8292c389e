"""genre-lightning: movie-poster genre classifiers with Lightning, Hydra and timm.

The Python API (the command-line tools are ``genre-train``, ``genre-eval``, ``genre-predict``,
``genre-data``, ``genre-report`` and ``genre-export``)::

    from genre_lightning import GenreClassifier

    model = GenreClassifier.from_checkpoint("outputs/demo/runs/<run>/checkpoints/<best>.ckpt")
    for result in model.predict(["poster.jpg", "another.png"], top_k=2):
        print(result.source, result.genre, result.top_k)

Names are imported on first use, so ``import genre_lightning`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "GenreClassifier": "genre_lightning.model",
    "GenrePrediction": "genre_lightning.inference",
    "PosterDataModule": "genre_lightning.data.datamodule",
    "ConfigError": "genre_lightning.errors",
    "UserFacingError": "genre_lightning.errors",
}
__all__ = [
    "ConfigError",
    "GenreClassifier",
    "GenrePrediction",
    "PosterDataModule",
    "UserFacingError",
    "__version__",
]

if TYPE_CHECKING:
    from genre_lightning.data.datamodule import PosterDataModule
    from genre_lightning.errors import ConfigError, UserFacingError
    from genre_lightning.inference import GenrePrediction
    from genre_lightning.model import GenreClassifier


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'genre_lightning' has no attribute {name!r}")
