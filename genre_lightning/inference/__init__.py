"""Prediction from a trained checkpoint, with nothing of ``training`` (no Lightning, Hydra, rich,
torchmetrics or scipy): ``Predictor`` (``predictor``), where its network runs (``backends``: PyTorch or
onnxruntime, ``onnx_model``, ``onnx_cache``, int8 ``quantize``), batch prediction over files (``batch``,
decoded by threads in ``decode``), prediction tables and CSV files (``prediction_table``,
``prediction_csv``), export to ONNX or TorchScript (``export``), class-activation maps (``explain``),
the model card (``model_card``, ``card_sections``) and genre-serve's HTTP server (``server``, with
``server_requests`` reading uploads and ``server_batcher`` batching them). Those last import their
optional libraries (grad-cam, Starlette, uvicorn) themselves, so this package stays light.

    from genre_lightning.inference import Predictor

    predictor = Predictor.from_checkpoint("outputs/demo/runs/<run>/checkpoints/<best>.ckpt")
    for result in predictor.predict(["poster.jpg"], top_k=2):
        print(result.source, result.genre, result.top_k)
"""

from __future__ import annotations

from genre_lightning.inference.predictor import GenrePrediction, Predictor

__all__ = ["GenrePrediction", "Predictor"]
