"""Where the repository is: for the tests that run its scripts or read its configs."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
