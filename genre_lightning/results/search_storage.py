"""Where a search's Optuna study is stored: the journal file in the search folder by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genre_lightning.utils.errors import ConfigError

JOURNAL_FILE = "study.journal"


def storage_for(spec: str | None, folder: Path) -> Any:
    """Optuna storage from ``hydra.sweeper.storage``: null (the journal in the search folder), a
    ``.journal`` path, or an SQL URL (``sqlite:///path.db``)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if spec and "://" in spec:
        return optuna.storages.RDBStorage(spec)
    path = Path(spec) if spec else folder / JOURNAL_FILE
    if path.exists() and not path.is_file():
        raise ConfigError(
            "hydra.sweeper.storage", spec, "a journal file path (or null, or an SQL URL like sqlite:///x.db)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
