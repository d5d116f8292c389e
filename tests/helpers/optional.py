"""Optional plugins and services: skip where they are missing on a developer machine, fail under CI."""

from __future__ import annotations

import importlib.util
import os

import pytest


def have_module(name: str) -> bool:
    """Whether ``name`` can be imported; False (not an error) when a parent package is missing too
    (``find_spec("hydra_plugins.x")`` raises ModuleNotFoundError without any hydra plugin)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def require(available: bool, reason: str) -> None:
    """Skip when something optional is missing on a developer machine; under CI=true, fail instead."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: this test must run, not skip)")
    pytest.skip(reason)


def have_onnx_export() -> bool:
    """Whether the ONNX exporter and onnxruntime are installed (the export and the onnxruntime backend)."""
    return have_module("onnxruntime") and have_module("onnxscript")
