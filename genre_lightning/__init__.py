"""genre-lightning: movie-poster genre classifiers with Lightning, Hydra and timm.

The package is built in floors; each imports only the floors below it (``tests/test_layers.py``
checks every import, lazy ones included):

* ``utils``: one-line user errors, CSV files, plain values, progress lines, DDP collectives;
* ``data``: scan and verify posters, group duplicates, split, ``annotations.csv``, the data module;
* ``models``: timm backbones, flip test-time augmentation, the ensemble network, checkpoint reading,
  and the prediction half of the single-/multi-label task objects (probabilities and decisions);
* ``training``: the LightningModule, the training half of the task objects (loss, metrics, tuning),
  fine-tuning, the linear probe, the feature cache, building ensembles, callbacks;
* ``inference``: ``Predictor`` (nothing of training: no Lightning, Hydra, rich, torchmetrics or scipy),
  batch prediction, export, class-activation maps, the model card, and genre-serve's HTTP server;
* ``results``: tables, figures, the test callback, trackers, sweep reports;
* ``launch``: multiruns with one shared split, Slurm;
* ``cli``: one thin Hydra main per command: ``genre-train``, ``genre-eval``, ``genre-predict``,
  ``genre-data``, ``genre-report``, ``genre-export``, ``genre-ensemble``, ``genre-serve``.

The Python API::

    from genre_lightning import Predictor

    predictor = Predictor.from_checkpoint("outputs/demo/runs/<run>/checkpoints/<best>.ckpt")
    for result in predictor.predict(["poster.jpg", "another.png"], top_k=2):
        print(result.source, result.genre, result.top_k)

Names are imported on first use, so ``import genre_lightning`` stays cheap. Old module paths
(``genre_lightning.model``, ...) keep working for one release (``_compat.py``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from genre_lightning import _compat

__version__ = "0.3.0"

_compat.install()

# Public name -> the module that defines it.
_EXPORTS = {
    "Predictor": "genre_lightning.inference.predictor",
    "GenrePrediction": "genre_lightning.inference.predictor",
    "GenreClassifier": "genre_lightning._legacy_model",
    "PosterDataModule": "genre_lightning.data.datamodule",
    "ConfigError": "genre_lightning.utils.errors",
    "UserFacingError": "genre_lightning.utils.errors",
}
__all__ = [
    "ConfigError",
    "GenreClassifier",
    "GenrePrediction",
    "PosterDataModule",
    "Predictor",
    "UserFacingError",
    "__version__",
]

if TYPE_CHECKING:
    from genre_lightning._legacy_model import GenreClassifier
    from genre_lightning.data.datamodule import PosterDataModule
    from genre_lightning.inference.predictor import GenrePrediction, Predictor
    from genre_lightning.utils.errors import ConfigError, UserFacingError


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'genre_lightning' has no attribute {name!r}")
