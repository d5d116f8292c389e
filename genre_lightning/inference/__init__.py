"""Prediction from a trained checkpoint, without Lightning, Hydra or rich: ``Predictor`` (``predictor``),
batch prediction over files (``batch``), prediction tables (``prediction_table``), export to ONNX or
TorchScript (``export``), and building an ensemble checkpoint (``ensemble``).

    from genre_lightning.inference import Predictor

    predictor = Predictor.from_checkpoint("outputs/demo/runs/<run>/checkpoints/<best>.ckpt")
    for result in predictor.predict(["poster.jpg"], top_k=2):
        print(result.source, result.genre, result.top_k)
"""

from __future__ import annotations

from genre_lightning.inference.predictor import GenrePrediction, Predictor

__all__ = ["GenrePrediction", "Predictor"]
