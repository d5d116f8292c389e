"""Prediction from a trained checkpoint, without Lightning, Hydra, rich, torchmetrics or scipy:
``Predictor`` (``predictor``), batch prediction over files (``batch``), prediction tables
(``prediction_table``), export to ONNX or TorchScript (``export``), building an ensemble checkpoint
(``ensemble``), class-activation maps (``explain``), the model card (``model_card``) and genre-serve's
HTTP server (``server``). Those last import their optional libraries (grad-cam, Starlette, uvicorn)
themselves, so this package stays light.

    from genre_lightning.inference import Predictor

    predictor = Predictor.from_checkpoint("outputs/demo/runs/<run>/checkpoints/<best>.ckpt")
    for result in predictor.predict(["poster.jpg"], top_k=2):
        print(result.source, result.genre, result.top_k)
"""

from __future__ import annotations

from genre_lightning.inference.predictor import GenrePrediction, Predictor

__all__ = ["GenrePrediction", "Predictor"]
