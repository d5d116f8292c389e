"""Where a predictor's network runs: in PyTorch, or in onnxruntime on an ONNX export of it.

``backend=auto|torch|onnxruntime`` and ``precision=32|bf16|int8``, shared by genre-predict, the
Python ``Predictor`` and anything built on it. A backend only turns a preprocessed batch into
logits; the network it runs includes flip TTA and ensembles (both are part of the exported graph),
and the task object turns the logits into probabilities and decisions in Python on every backend,
so thresholds and anything a task adds apply alike.

The onnxruntime backend runs the checkpoint exported on first use (``onnx_cache.py``: cached by
the checkpoint's content hash, the existing parity check on the first batch), or its int8 static
quantisation (``precision=int8``, calibrated on training posters of the checkpoint's split).
``auto`` takes onnxruntime on a CPU when it is installed and the model exports with parity, and
torch otherwise; a failed export or parity check falls back to torch with one warning line.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from genre_lightning.inference.onnx_model import EXPORT_EXTRA, can_export_onnx, cpu_cores, have_onnxruntime
from genre_lightning.models.tta import TTA
from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime")
PRECISIONS = ("32", "bf16", "int8")
Logits = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BackendChoice:
    """What a predictor was asked to run on.

    Args:
        backend: ``auto``, ``torch`` or ``onnxruntime``.
        precision: ``32``; ``bf16`` (PyTorch autocast); ``int8`` (onnxruntime static quantisation).
        freeze: PyTorch: a frozen TorchScript trace (BatchNorm folded into the convolutions).
        threads: onnxruntime's intra-op threads (None: one per core this process may use).
        cache_dir: where exported models are kept (None: ``onnx_cache.cache_folder``'s default).
    """

    backend: str = "auto"
    precision: str = "32"
    freeze: bool = False
    threads: int | None = None
    cache_dir: str | Path | None = None

    def check(self, device: torch.device) -> None:
        """One-line errors for combinations that cannot run, before any work."""
        if self.backend not in BACKENDS:
            raise ConfigError("backend", self.backend, f"one of {list(BACKENDS)}")
        if str(self.precision) not in PRECISIONS:
            raise ConfigError("precision", self.precision, f"one of {list(PRECISIONS)}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError("threads", self.threads, "a positive number of threads, or null (one per core)")
        wants_onnx = self.backend == "onnxruntime" or self.precision == "int8"
        if self.precision == "int8" and self.backend == "torch":
            raise ConfigError("precision", "int8", "32 or bf16 with backend=torch (int8 runs in onnxruntime)")
        if wants_onnx and self.precision == "bf16":
            raise ConfigError("precision", "bf16", "32 or int8 with backend=onnxruntime (bf16 runs in PyTorch)")
        if wants_onnx and self.freeze:
            raise ConfigError("freeze", True, "false with backend=onnxruntime (freezing is a PyTorch trace)")
        if wants_onnx and device.type != "cpu":
            raise ConfigError("device", str(device), "cpu for the onnxruntime backend (or backend=torch on a GPU)")
        if wants_onnx and not (have_onnxruntime() and can_export_onnx()):
            what = "backend=onnxruntime" if self.backend == "onnxruntime" else "precision=int8"
            raise ConfigError("backend", self.backend, f"auto or torch: {what} needs {EXPORT_EXTRA}")

    def onnx_wanted(self, device: torch.device, identity: Mapping[str, Any]) -> bool:
        """Whether to try onnxruntime (``auto``: on a CPU, when it is installed, for a checkpoint file)."""
        if self.backend == "onnxruntime" or self.precision == "int8":
            return True
        return (
            self.backend == "auto"
            and self.precision == "32"
            and not self.freeze
            and device.type == "cpu"
            and "sha256" in identity
            and have_onnxruntime()
            and can_export_onnx()
        )


class TorchBackend:
    """The network in PyTorch: channels-last memory, optionally bf16 autocast or a frozen trace."""

    name = "torch"

    def __init__(self, network: nn.Module, channels_last: bool, precision: str = "32", freeze: bool = False):
        self.network, self.channels_last = network, channels_last
        self.bf16, self.freeze = precision == "bf16", freeze
        self.precision = precision
        self._frozen: Logits | None = None

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def eager(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16),
        ):
            return self.network(images).float()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.freeze and not self.bf16:
            if self._frozen is None:
                self._frozen = frozen_logits(self, images)
            with torch.inference_mode():
                return self._frozen(images.to(self.device))
        return self.eager(images)


class OnnxRuntimeBackend:
    """An ONNX file in an onnxruntime CPU session (thread-safe: a server may call it from several threads).

    Its idle threads sleep instead of spinning: decode threads share the cores with it, and a spinning
    thread takes a core from them between batches (docs/PERFORMANCE.md)."""

    name = "onnxruntime"

    def __init__(self, model: Path, precision: str, threads: int | None = None) -> None:
        from genre_lightning.inference.onnx_model import onnx_session

        self.model, self.precision = model, precision
        self.threads = threads or cpu_cores()
        self.session = onnx_session(model, self.threads, spinning=False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from genre_lightning.inference.onnx_model import run_session

        return torch.from_numpy(run_session(self.session, images))


Backend = TorchBackend | OnnxRuntimeBackend


class LazyBackend:
    """The backend a predictor runs, chosen on its first batch: an export's parity is checked on real
    images, and the export (tens of seconds, once per checkpoint) is only paid by a predictor that predicts.

    ``choose`` receives that first batch and returns the backend; a lock makes concurrent first
    calls (a server's threads) choose once."""

    def __init__(self, choose: Callable[[torch.Tensor], Backend]) -> None:
        self._choose = choose
        self._lock = threading.Lock()
        self.backend: Backend | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        backend = self.backend
        if backend is None:
            with self._lock:
                if self.backend is None:
                    self.backend = self._choose(images)
                backend = self.backend
        return backend(images)

    def reset(self) -> None:
        with self._lock:
            self.backend = None


def frozen_logits(backend: TorchBackend, example: torch.Tensor) -> Logits:
    """A frozen TorchScript trace of the network: BatchNorm folded into the convolutions
    (docs/PERFORMANCE.md). Falls back to the network itself if tracing fails or changes the logits."""
    memory_format = torch.channels_last if backend.channels_last else torch.contiguous_format
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notices
            example = example.to(backend.device)
            traced = torch.jit.trace(backend.network, example[:2].contiguous(memory_format=memory_format))
            frozen = torch.jit.freeze(traced)

            def forward(images: torch.Tensor) -> torch.Tensor:
                return frozen(images.contiguous(memory_format=memory_format))

            with torch.inference_mode():
                if (forward(example) - backend.eager(example)).abs().max().item() <= 1e-4:
                    return forward
        log.warning("The frozen trace changed the logits; predicting with the model as it is")
    except Exception as err:  # a model TorchScript cannot trace: eager is always correct
        log.warning("Could not freeze the model for inference (%s); predicting with the model as it is", err)
    return backend.eager


def choose_backend(
    choice: BackendChoice,
    network: TorchBackend,
    identity: Mapping[str, Any],
    tta: TTA,
    images: torch.Tensor,
    transform: Callable | None = None,
    calibration_paths: Sequence[str] = (),
) -> Backend:
    """The backend for ``choice``, decided on the first batch ``images``: onnxruntime on the checkpoint's
    cached export (made now if needed, its parity checked on ``images``) when wanted and the export
    reproduces ``network``; else ``network`` (PyTorch) itself, with one warning line when onnxruntime
    was wanted. int8 is calibrated on ``calibration_paths`` through ``transform``."""
    from genre_lightning.inference.onnx_cache import FLOAT_MODEL, INT8_MODEL, entry_folder, float_export, int8_export

    if not choice.onnx_wanted(network.device, identity):
        return network
    if "sha256" not in identity:
        raise ConfigError(
            "backend", choice.backend, "auto or torch for a network in memory (onnxruntime runs checkpoint files)"
        )
    folder = entry_folder(choice.cache_dir, identity["sha256"], tta)
    reference = network(images).cpu().numpy()
    record = float_export(folder, network.network, images.cpu(), reference)
    if not record["passed"]:
        why = record.get("error") or (
            f"its logits differ from the model's by {record['max_abs_logit_diff']:.1e} (>= {record['tolerance']:g})"
        )
        log.warning(
            "onnxruntime backend not used: the ONNX export of %s failed (%s); predicting with torch (record: %s)",
            identity.get("checkpoint", "the checkpoint"),
            why,
            folder / "float32.json",
        )
        return network
    if choice.precision == "int8":
        from genre_lightning.inference.quantize import image_batches

        describe = {"calibration_images": len(calibration_paths), "calibration_split": "train"}
        int8_export(folder, lambda: image_batches(list(calibration_paths), transform), describe)
        return OnnxRuntimeBackend(folder / INT8_MODEL, "int8", choice.threads)
    return OnnxRuntimeBackend(folder / FLOAT_MODEL, "32", choice.threads)
