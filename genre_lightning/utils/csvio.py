"""CSV files the project writes and reads back (annotations, predictions).

File names that are not valid UTF-8 (possible on Linux) are kept byte-exact with Python's
``surrogateescape`` handler, so such a file can be listed, trained on and found again. Text
columns hold Python strings (:data:`TEXT`): pandas 3 stores ``str`` columns in Arrow when pyarrow
is installed (MLflow brings it), and Arrow refuses such names.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# The dtype of text columns that may hold file names: Python strings, surrogates allowed.
TEXT = object


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """Write atomically: a reader never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False, errors="surrogateescape")
    tmp.replace(path)


def read_csv(path: str | Path) -> pd.DataFrame:
    """Every column as text; empty cells stay empty strings."""
    return pd.read_csv(path, dtype=TEXT, keep_default_na=False, encoding_errors="surrogateescape")
