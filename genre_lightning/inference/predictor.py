"""Prediction from Python (a notebook, a service, the commands): a trained model, ready to predict.

``Predictor.from_checkpoint(path)`` rebuilds the network from a checkpoint (a genre-train or
genre-ensemble ``.ckpt``) without Lightning, Hydra or rich, and ``predict`` takes images in any of
these forms, in one call or many:

* file paths (decoded exactly as in training: EXIF orientation, transparency flattened on white,
  16-bit and CMYK converted), batched, decoded by threads while the model runs (``batch.py``);
* PIL images, and ``uint8`` tensors of raw RGB pixels ``(3, H, W)`` / ``(N, 3, H, W)``, which go
  through the checkpoint's own evaluation transform (:attr:`Predictor.eval_transform`);
* a floating-point tensor batch that is already preprocessed (what ``eval_transform`` returns).

A file that cannot be decoded gives a :class:`GenrePrediction` with ``error`` set instead of raising;
so does a file or picture that the intake (genre-data) would refuse: the same rules, the same reason
(``data/imageio.py``; the shorter side's minimum is the checkpoint's ``data.min_image_side``).

The network runs on a backend (``backends.py``): ``backend="auto"`` (the default of
``from_checkpoint``) runs the checkpoint's ONNX export in onnxruntime on a CPU when onnxruntime is
installed and the export reproduces the network's logits, and PyTorch otherwise; the task object
turns logits into probabilities and decisions in Python on every backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn
from PIL import Image

from genre_lightning.data.dataset import build_transforms
from genre_lightning.data.imageio import DEFAULT_MIN_SIDE, UnreadableImage, check_size, to_rgb
from genre_lightning.inference.backends import Backend, BackendChoice, LazyBackend, TorchBackend, choose_backend
from genre_lightning.inference.batch import predict_files
from genre_lightning.inference.decode import decode_workers
from genre_lightning.inference.onnx_model import cpu_cores
from genre_lightning.models.checkpoint_io import datamodule_state, file_digest, read_checkpoint, upgrade_state_dict
from genre_lightning.models.network import build_network
from genre_lightning.models.prediction_task import PredictionTask, make_prediction_task
from genre_lightning.models.tta import TTA, checkpoint_tta, resolve_tta, with_tta
from genre_lightning.utils.errors import ConfigError

ImageInput = str | Path | Image.Image | torch.Tensor


@dataclass(frozen=True)
class GenrePrediction:
    """One image's result: every genre's probability (in the model's class order), the top k, and
    ``genres``: the predicted genres (multi-label: every genre above its decision threshold, in class
    order, possibly none; single-label: the top genre).

    ``error`` is set, and the probabilities are empty, for a file that could not be decoded.
    """

    source: str
    probabilities: dict[str, float] = field(default_factory=dict)
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    genres: list[str] = field(default_factory=list)

    @property
    def genre(self) -> str | None:
        """The most probable genre (None for an unreadable file)."""
        return self.top_k[0][0] if self.top_k else None


class Predictor:
    """A genre model for prediction: its network (flip TTA inside), its task (probabilities and
    decisions), its genres and its data config (the evaluation transform).

    Args:
        net: the trained network (a timm backbone with its head, or an ensemble network).
        task: the model's task object (``models/prediction_task.py``): single- or multi-label decisions.
        data_config: the timm data config the network was trained with.
        tta_hflip: average each image's logits with its mirror image's (``tta``: more views, ``models/tta.py``).
        channels_last: run the network in channels-last memory (faster convolutions on CPUs).
        identity: what the checkpoint is (path, content digest, backbone): reported with predictions.
        backend: where the network runs (``backends.BackendChoice``; default: ``auto``, which is
            PyTorch unless ``identity`` names a checkpoint file by its content hash).
        min_image_side: a picture whose shorter side is smaller is refused (an ``error``), as the
            intake refuses it (None: any size).
    """

    def __init__(
        self,
        net: nn.Module,
        task: PredictionTask,
        data_config: dict[str, Any],
        tta_hflip: bool = False,
        channels_last: bool = True,
        identity: dict[str, Any] | None = None,
        backend: BackendChoice | None = None,
        min_image_side: int | None = DEFAULT_MIN_SIDE,
        tta: TTA | Mapping[str, Any] | None = None,
    ) -> None:
        self.task = task
        self.min_image_side = min_image_side
        self.data_config = dict(data_config)
        self.channels_last = channels_last
        self.tta = resolve_tta(tta, tta_hflip, "tta")
        self.tta_hflip = self.tta.hflip
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.network = with_tta(net, self.tta).eval()
        self.identity = dict(identity or {})
        self.backend_choice = backend or BackendChoice()
        self.backend_choice.check(self.device)
        self.calibration_paths: list[str] = []  # precision=int8: training posters to calibrate on
        self._logits = LazyBackend(self._choose_backend)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        threshold: float | None = None,
        channels_last: bool = True,
        tta_hflip: bool | None = None,
        backend: str = "auto",
        precision: str = "32",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        freeze: bool = False,
        onnx_export: str = "background",
        tta: Mapping[str, Any] | None = None,
    ) -> Predictor:
        """The model in ``path``, on ``device``. ``threshold``: a multi-label model's one decision
        threshold for every genre instead of its tuned ones; ``tta_hflip``, ``tta``: None keeps the checkpoint's.

        ``backend``: ``auto``, ``torch`` or ``onnxruntime``; ``precision``: ``32``, ``bf16`` (PyTorch)
        or ``int8`` (onnxruntime); ``threads``: onnxruntime's threads (None: one per core);
        ``cache_dir``: where ONNX exports are kept (``onnx_cache.cache_folder``); ``freeze``: PyTorch's
        frozen trace; ``onnx_export``: ``background`` or ``wait``. See ``backends.py``."""
        choice = BackendChoice(backend, str(precision), freeze, threads, cache_dir, onnx_export)
        choice.check(torch.device(device))
        checkpoint = read_checkpoint(path)
        hp = checkpoint["hyper_parameters"]
        classes = list(hp["classes"])
        task = make_prediction_task(hp.get("task", "single"), classes, hp.get("threshold"), hp.get("temperature"))
        net, data_config = build_network(
            hp["backbone"],
            len(classes),
            drop_rate=hp.get("drop_rate", 0.0),
            data_config=hp.get("data_config"),
            members=hp.get("members"),
        )
        defaults = {f"task.{name}": buffer for name, buffer in task.named_buffers()}
        state = upgrade_state_dict(dict(checkpoint["state_dict"]), defaults)
        net.load_state_dict(_part(state, "net."))
        task.load_checkpoint_state(_part(state, "task."))
        identity = {"checkpoint": str(Path(path).resolve()), "sha256": file_digest(path), "backbone": hp["backbone"]}
        identity |= {"classes": classes, "task": hp.get("task", "single")}
        views = checkpoint_tta(hp, tta, tta_hflip)
        # The intake's setting the model was trained with (older checkpoints: the default).
        min_side = datamodule_state(checkpoint).get("min_image_side", DEFAULT_MIN_SIDE)
        predictor = cls(net, task, data_config, views.hflip, channels_last, identity, choice, min_side, views)
        if choice.precision == "int8":  # its calibration posters must exist: said now, not at the first batch
            from genre_lightning.inference.quantize import calibration_paths

            predictor.calibration_paths = calibration_paths(path, classes)
        predictor.set_threshold(threshold)
        return predictor.to(device)

    @classmethod
    def from_module(cls, module: Any) -> Predictor:
        """A predictor that runs a ``GenreClassifier`` in memory (its network and task, shared, not copied)."""
        return cls(
            module.net,
            module.task,
            module.data_config,
            tta=module.test_time_augmentation(),
            channels_last=bool(module.hparams.channels_last),
            identity={"backbone": module.hparams.backbone, "classes": list(module.classes)},
            backend=BackendChoice("torch"),
            min_image_side=None,  # what its data module feeds it passed the intake already
        )

    @property
    def classes(self) -> list[str]:
        return self.task.classes

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def multilabel(self) -> bool:
        return self.task.multilabel

    @property
    def backend(self) -> str:
        """The backend the network runs on (``torch`` or ``onnxruntime``), chosen on the first batch;
        before it, the choice asked for (``auto``, ...)."""
        return getattr(self._logits.backend, "name", self.backend_choice.backend)

    @property
    def backend_note(self) -> str:  # what the backend did besides (torch while the ONNX export ran), or ""
        return getattr(self._logits.backend, "note", "")

    @property
    def precision(self) -> str:
        return getattr(self._logits.backend, "precision", self.backend_choice.precision)

    def to(self, device: str | torch.device) -> Predictor:
        self.network.to(device)
        self.task.to(device)
        self.backend_choice.check(self.device)
        self._logits.reset()  # chosen again for the new device
        return self

    def decode_workers(self) -> int:
        """Decode threads for file inputs: the cores the forward pass leaves free, at least one
        (onnxruntime runs ``threads``; PyTorch its intra-op threads)."""
        forward = self.backend_choice.threads or cpu_cores()
        return decode_workers(cpu_cores(), forward if self.device.type == "cpu" else 0)

    def set_threshold(self, threshold: float | None) -> None:
        """Multi-label: one decision threshold for every genre (None: the tuned ones)."""
        if not self.task.multilabel:
            if threshold is not None:
                raise ConfigError("threshold", threshold, "null for a single-label checkpoint (it takes the top genre)")
            return
        self.task.set_threshold(threshold)

    @cached_property
    def eval_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The checkpoint's evaluation transform: an RGB PIL image to the tensor the network takes."""
        return build_transforms(self.data_config, None)[1]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The network's logits (flip-averaged where the model uses flip TTA) of a preprocessed batch,
        from the backend (chosen on the first call)."""
        return self._logits(images)

    def _choose_backend(self, images: torch.Tensor) -> Backend:
        choice = self.backend_choice
        network = TorchBackend(self.network, self.channels_last, choice.precision, choice.freeze)
        return choose_backend(
            choice, network, self.identity, self.tta, images, self.eval_transform, self.calibration_paths
        )

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Genre probabilities of a preprocessed batch (softmax, or a sigmoid per genre)."""
        return self.task.probabilities(self.logits(images).float())

    def predict(
        self, images: ImageInput | Sequence[ImageInput], top_k: int = 3, batch_size: int = 32
    ) -> list[GenrePrediction]:
        """Genre probabilities and the top ``top_k`` genres of each image, in input order (see the
        module docstring for the inputs)."""
        items = _as_items(images)
        results: list[GenrePrediction | None] = [None] * len(items)
        paths = [(i, str(item)) for i, item in enumerate(items) if isinstance(item, str | Path)]
        if paths:
            frame = self.predict_files([p for _, p in paths], batch_size=batch_size, progress=False)
            for (i, path), row in zip(paths, frame.itertuples(index=False), strict=True):
                if row.error:
                    results[i] = GenrePrediction(path, error=row.error)
                else:
                    probabilities = torch.tensor([getattr(row, f"p_{c}") for c in self.classes])
                    results[i] = self._prediction(path, probabilities, top_k)
        others = [(i, item) for i, item in enumerate(items) if not isinstance(item, str | Path)]
        for start in range(0, len(others), batch_size):
            inputs = []
            for i, item in others[start : start + batch_size]:
                try:
                    inputs.append((i, self._model_input(item)))
                except UnreadableImage as err:  # a picture the intake would refuse: its reason
                    results[i] = GenrePrediction(_source(item, i), error=str(err))
            if not inputs:
                continue
            batch = torch.stack([model_input for _, model_input in inputs])
            for (i, _), row in zip(inputs, self.probabilities(batch).cpu(), strict=True):
                results[i] = self._prediction(_source(items[i], i), row, top_k)
        return [r for r in results if r is not None]

    def model_input(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """One PIL image or ``(3, H, W)`` tensor as the network takes it (pixels through ``eval_transform``)."""
        return self._model_input(image)

    def explain(
        self,
        images: ImageInput | Sequence[ImageInput],
        genres: str | Sequence[str] = "top",
        method: str = "gradcam",
        top_k: int = 3,
    ) -> list[Any]:
        """Class-activation maps (``inference/explain.py``): for each image, an ``(H, W)`` array in [0, 1]
        per genre (``"top"``, ``"all"`` or names), with the prediction and the picture the network saw:
        a list of ``explain.Explanation``."""
        from genre_lightning.inference.explain import explain

        return explain(self, images, genres=genres, method=method, top_k=top_k)

    def predict_files(self, paths: Sequence[str], **options: Any) -> pd.DataFrame:
        """Probabilities for each file as the table genre-predict writes (``inference/batch.py``)."""
        return predict_files(self, list(paths), **options)

    def _prediction(self, source: str, probabilities: torch.Tensor, top_k: int) -> GenrePrediction:
        values = [float(p) for p in probabilities.tolist()]
        ranked = sorted(zip(self.classes, values, strict=True), key=lambda pair: -pair[1])[: max(1, top_k)]
        chosen = self.task.decisions(probabilities[None].to(self.device))[0].tolist()
        genres = [c for c, on in zip(self.classes, chosen, strict=True) if on]
        return GenrePrediction(source, dict(zip(self.classes, values, strict=True)), ranked, genres=genres)

    def _model_input(self, item: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(item, Image.Image):
            return self.eval_transform(to_rgb(check_size(item, self.min_image_side)))
        if not isinstance(item, torch.Tensor) or item.ndim != 3 or item.shape[0] != 3:
            shape = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
            raise ConfigError("images", shape, "file paths, PIL images, or (3, H, W) / (N, 3, H, W) tensors")
        if item.dtype == torch.uint8:  # raw pixels: through the checkpoint's eval transform
            pixels = Image.fromarray(item.permute(1, 2, 0).cpu().numpy())
            return self.eval_transform(check_size(pixels, self.min_image_side))
        if not item.is_floating_point() or not math.isfinite(float(item.abs().max())):
            raise ConfigError(
                "images", f"tensor of dtype {item.dtype}", "uint8 pixels or a finite preprocessed float batch"
            )
        return item.float()


def _source(item: ImageInput, index: int) -> str:
    return f"<{type(item).__name__} {index}>"


def _part(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def _as_items(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """One input or many, as a list; a 4-D tensor is a batch of images."""
    if isinstance(images, str | Path | Image.Image):
        return [images]
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ConfigError(
            "images", f"tensor of shape {tuple(images.shape)}", "a (3, H, W) image or an (N, 3, H, W) batch"
        )
    return list(images)
