"""Where a model came from: the software, the code and the machine that made it.

:func:`environment` gathers it when called (never on import): package versions, the git commit
of the package's code when it runs from a git checkout (and whether that tree had uncommitted
changes), Python, the platform, the CPU and the GPUs. genre-train stores it in the checkpoint
(``checkpoint["genre_lightning"]["environment"]``), in ``metrics.json`` and in the trackers;
the model card prints it (docs/provenance.md).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# The distributions whose versions decide what a run computes (onnxruntime only where installed),
# with the module each is imported as.
PACKAGES = {
    "genre-lightning": "genre_lightning",
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "lightning": "lightning",
    "numpy": "numpy",
    "onnxruntime": "onnxruntime",
}
GIT_TIMEOUT_S = 5.0


def environment() -> dict[str, Any]:
    """The environment of this process as plain values (JSON- and ``weights_only``-safe)."""
    return {
        "packages": package_versions(),
        "code": code_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": {"model": cpu_model(), "count": os.cpu_count()},
        **accelerators(),
    }


def package_versions() -> dict[str, str]:
    """The version of each of :data:`PACKAGES`: the running module's ``__version__`` where it is imported
    (e.g. ``2.5.1+cpu``, as ``torch.__version__`` says), else the installed one; one not installed is left out."""
    versions = {}
    for name, module in PACKAGES.items():
        running = getattr(sys.modules.get(module), "__version__", None)
        if running is not None:
            versions[name] = str(running)
            continue
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def code_version(package_dir: Path | None = None) -> dict[str, Any]:
    """The git commit of the package's code, and whether its checkout had uncommitted changes; for an
    installed wheel (no ``.git`` above the package) ``{"source": "installed package", "commit": None}``."""
    package_dir = package_dir or Path(__file__).resolve().parent.parent
    checkout = next((p for p in (package_dir, *package_dir.parents) if (p / ".git").exists()), None)
    if checkout is None:
        return {"source": "installed package", "commit": None, "dirty": None}
    try:
        commit = _git(checkout, "rev-parse", "HEAD")
        changed = _git(checkout, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):  # no git program, or not a working tree git can read
        return {"source": f"git checkout {checkout}", "commit": None, "dirty": None}
    return {
        "source": f"git checkout {checkout}",
        "commit": commit,
        "dirty": bool(changed),
        "changed_files": len(changed.splitlines()),
    }


def _git(checkout: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True
    )
    return done.stdout.strip()


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine() or "unknown"


def accelerators() -> dict[str, Any]:
    """The CUDA GPUs' names and the CUDA version torch was built with (empty and None without CUDA)."""
    import torch  # only when gathering: importing this module stays cheap

    if not torch.cuda.is_available():
        return {"gpus": [], "cuda": None}
    return {
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cuda": torch.version.cuda,
    }


def flat_environment(env: dict[str, Any], prefix: str = "environment.") -> dict[str, str]:
    """``{"environment.packages.torch": "2.5.1", ...}``: for tracker parameters and tags."""
    flat: dict[str, str] = {}
    for key, value in env.items():
        if isinstance(value, dict):
            flat.update(flat_environment(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            flat[f"{prefix}{key}"] = ", ".join(map(str, value)) or "none"
        else:
            flat[f"{prefix}{key}"] = "none" if value is None else str(value)
    return flat


def describe_environment(env: dict[str, Any]) -> list[str]:
    """The environment as Markdown list lines (the model card's section)."""
    code = env.get("code") or {}
    if code.get("commit"):
        state = "with uncommitted changes" if code.get("dirty") else "clean"
        code_line = f"git commit `{code['commit']}` ({state}; {code.get('source', '')})"
    else:
        code_line = f"{code.get('source', 'unknown')} (no git commit recorded)"
    packages = env.get("packages") or {}
    cpu = env.get("cpu") or {}
    gpus = env.get("gpus") or []
    return [
        f"- Code: {code_line}",
        "- Packages: " + ", ".join(f"{name} {version}" for name, version in packages.items()),
        f"- Python {env.get('python', '?')} on {env.get('platform', '?')}",
        f"- CPU: {cpu.get('model', '?')} ({cpu.get('count', '?')} cores)",
        "- GPU: " + (f"{', '.join(gpus)} (CUDA {env.get('cuda')})" if gpus else "none"),
    ]
