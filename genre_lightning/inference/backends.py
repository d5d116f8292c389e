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

A checkpoint ``auto`` has not exported yet (``onnx_export="background"``, the default) is predicted
with torch at once while a detached process exports it (``background_export.py``); the predictor
moves to onnxruntime at the first batch after the export is ready, and later calls start on it.
``onnx_export="wait"`` exports first, as ``backend=onnxruntime`` always does.
"""

from __future__ import annotations

import logging
import threading
import time
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
ONNX_EXPORTS = ("background", "wait")
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
        onnx_export: ``auto`` on a checkpoint not exported yet: ``background`` (torch at once, the
            export in a detached process) or ``wait`` (export first).
    """

    backend: str = "auto"
    precision: str = "32"
    freeze: bool = False
    threads: int | None = None
    cache_dir: str | Path | None = None
    onnx_export: str = "background"

    def check(self, device: torch.device) -> None:
        """One-line errors for combinations that cannot run, before any work."""
        if self.backend not in BACKENDS:
            raise ConfigError("backend", self.backend, f"one of {list(BACKENDS)}")
        if str(self.precision) not in PRECISIONS:
            raise ConfigError("precision", self.precision, f"one of {list(PRECISIONS)}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError("threads", self.threads, "a positive number of threads, or null (one per core)")
        if self.onnx_export not in ONNX_EXPORTS:
            raise ConfigError("onnx_export", self.onnx_export, f"one of {list(ONNX_EXPORTS)}")
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


class TorchUntilExported:
    """PyTorch while the checkpoint's ONNX export runs in another process; onnxruntime from the first
    batch after its record appears (once a second it looks). ``note`` says what happened."""

    precision = "32"

    def __init__(self, network: TorchBackend, folder: Path, threads: int | None, identity: Mapping[str, Any]) -> None:
        self.network, self.folder, self.threads, self.identity = network, folder, threads, identity
        self.onnx: OnnxRuntimeBackend | None = None
        self.waiting, self.on_torch, self._next_look = True, 0, 0.0
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "onnxruntime" if self.onnx is not None else "torch"

    @property
    def note(self) -> str:
        if self.onnx is not None:
            return f"torch for the first {self.on_torch} images, while the ONNX export ran" if self.on_torch else ""
        if self.waiting:
            return "the ONNX export runs in the background: onnxruntime from the next call"
        return ""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.waiting:
            self._look()
        if self.onnx is not None:
            return self.onnx(images)
        self.on_torch += len(images)
        return self.network(images)

    def _look(self) -> None:
        from genre_lightning.inference.onnx_cache import FLOAT_MODEL, FLOAT_RECORD, read_record

        with self._lock:
            if not self.waiting or time.monotonic() < self._next_look:
                return
            self._next_look = time.monotonic() + 1.0
            record = read_record(self.folder / FLOAT_RECORD)
            if record is None:
                return
            self.waiting = False
            if record["passed"]:
                self.onnx = OnnxRuntimeBackend(self.folder / FLOAT_MODEL, "32", self.threads)
            else:
                warn_export_failed(self.identity, self.folder, record)


Backend = TorchBackend | OnnxRuntimeBackend | TorchUntilExported


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
    was wanted. int8 is calibrated on ``calibration_paths`` through ``transform``. ``auto`` on a
    checkpoint without an export yet: ``TorchUntilExported`` (``choice.onnx_export="background"``)."""
    from genre_lightning.inference.onnx_cache import (
        FLOAT_MODEL,
        FLOAT_RECORD,
        INT8_MODEL,
        entry_folder,
        float_export,
        int8_export,
        read_record,
    )

    if not choice.onnx_wanted(network.device, identity):
        return network
    if "sha256" not in identity:
        raise ConfigError(
            "backend", choice.backend, "auto or torch for a network in memory (onnxruntime runs checkpoint files)"
        )
    folder = entry_folder(choice.cache_dir, identity["sha256"], tta)
    background = choice.backend == "auto" and choice.precision == "32" and choice.onnx_export == "background"
    if background and not (folder / FLOAT_RECORD).is_file():  # torch now, onnxruntime once it is exported
        return export_in_background(network, identity, tta, images, folder, choice.threads)
    record = read_record(folder / FLOAT_RECORD)  # a warm cache: no reference forward pass in torch
    if record is None:
        record = float_export(folder, network.network, images.cpu(), network(images).cpu().numpy())
    if not record["passed"]:
        warn_export_failed(identity, folder, record)
        return network
    if choice.precision == "int8":
        from genre_lightning.inference.quantize import image_batches

        describe = {"calibration_images": len(calibration_paths), "calibration_split": "train"}
        int8_export(folder, lambda: image_batches(list(calibration_paths), transform), describe)
        return OnnxRuntimeBackend(folder / INT8_MODEL, "int8", choice.threads)
    return OnnxRuntimeBackend(folder / FLOAT_MODEL, "32", choice.threads)


def export_in_background(
    network: TorchBackend,
    identity: Mapping[str, Any],
    tta: TTA,
    images: torch.Tensor,
    folder: Path,
    threads: int | None,
) -> TorchUntilExported:
    """Torch now, and the export started in a detached process unless one runs already; an earlier
    background export that died is reported (one warning line) and started again."""
    from genre_lightning.inference import background_export

    died = background_export.died_earlier(folder)
    if died:
        log.warning("%s; exporting again in the background", died)
    if background_export.start(folder, identity["checkpoint"], tta, network.channels_last, images):
        log.info("Exporting the checkpoint to ONNX in the background (cache %s); predicting with torch", folder)
    return TorchUntilExported(network, folder, threads, identity)


def warn_export_failed(identity: Mapping[str, Any], folder: Path, record: Mapping[str, Any]) -> None:
    why = record.get("error") or (
        f"its logits differ from the model's by {record['max_abs_logit_diff']:.1e} (>= {record['tolerance']:g})"
    )
    log.warning(
        "onnxruntime backend not used: the ONNX export of %s failed (%s); predicting with torch (record: %s)",
        identity.get("checkpoint", "the checkpoint"),
        why,
        folder / "float32.json",
    )
