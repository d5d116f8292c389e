"""``genre_lightning.model`` of 0.2: ``GenreClassifier`` with its old prediction methods.

Deprecated, removed in 0.4: train with ``genre_lightning.training.module.GenreClassifier`` and predict
with ``genre_lightning.inference.Predictor``. ``import genre_lightning.model`` lands here
(``_compat.MOVED``); ``genre_lightning.GenreClassifier`` is this class too, so 0.2's
``GenreClassifier.from_checkpoint(path).predict(...)`` keeps working, with a ``FutureWarning``.
"""

from __future__ import annotations

import warnings
from typing import Any

from genre_lightning._compat import REMOVED_IN
from genre_lightning.data.dataset import build_transforms
from genre_lightning.inference.predictor import GenrePrediction, Predictor
from genre_lightning.training.module import GenreClassifier as Trainable


class GenreClassifier(Trainable):
    """``GenreClassifier`` with the prediction methods of 0.2 (deprecated: use ``Predictor``)."""

    def predict(self, images: Any, top_k: int = 3, batch_size: int = 32) -> list[GenrePrediction]:
        """Deprecated: ``Predictor.from_checkpoint(path).predict(...)`` (or ``Predictor.from_module(model)``)."""
        warnings.warn(
            "GenreClassifier.predict is deprecated: use genre_lightning.inference.Predictor.from_checkpoint(path)"
            f".predict(...); it is removed in {REMOVED_IN}",
            FutureWarning,
            stacklevel=2,
        )
        self.eval()
        return Predictor.from_module(self).predict(images, top_k=top_k, batch_size=batch_size)

    @property
    def eval_transform(self) -> Any:
        return build_transforms(self.data_config, None)[1]

    @property
    def multilabel(self) -> bool:
        return self.task.multilabel

    def decision_thresholds(self) -> Any:
        return self.task.thresholds()

    def probabilities(self, logits: Any) -> Any:
        return self.task.probabilities(logits)


# genre_lightning.model.TRAINING_DATA_KEY, read by older tools
TRAINING_DATA_KEY = "genre_lightning_training_data"
