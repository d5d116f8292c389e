"""The Optuna study behind a search: where it is stored, which search it belongs to, one sweeper at a time.

The study is written only by the process that runs the search (the fold runs, local or Slurm jobs,
write their own run folders), so either storage works on a shared file system: Optuna's journal file
(the default, ``<search folder>/study.journal``: an append-only log that a killed process leaves
readable) or an SQLite/SQL URL. A study records what it searches (objective, space, the recipe of the
command line, folds) and the fold assignment it was scored on; the same command continues it, and a
different search pointed at the same storage is refused in one line.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from genre_lightning.results.search_storage import storage_for  # noqa: F401  (the search opens it from here)
from genre_lightning.utils.errors import ConfigError

LOCK_FILE = "search.lock"
SEARCH_ATTR = "genre_lightning_search"
DIGEST_ATTR = "fold_digest"


def open_study(storage: Any, name: str, signature: dict[str, Any], direction: str, sampler: Any, pruner: Any) -> Any:
    """Create the study, or load it when the storage already holds this search (same signature)."""
    import optuna

    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if names and name not in names:
        raise ConfigError(
            "hydra.sweeper.storage",
            _describe(storage),
            f"a storage of study {name!r} or an empty one: it holds {names} "
            f"(hydra.sweeper.study_name={names[0]} continues that search)",
        )
    study = optuna.create_study(
        storage=storage, study_name=name, direction=direction, sampler=sampler, pruner=pruner, load_if_exists=True
    )
    recorded = study.user_attrs.get(SEARCH_ATTR)
    if recorded is None:
        study.set_user_attr(SEARCH_ATTR, signature)
    elif recorded != signature:
        differ = sorted(k for k in {*recorded, *signature} if recorded.get(k) != signature.get(k))
        raise ConfigError(
            "hydra.sweeper.study_name",
            name,
            f"a new name: study {name!r} in {_describe(storage)} is another search (its {', '.join(differ)} "
            f"differ: {json.dumps({k: recorded.get(k) for k in differ})})",
        )
    return study


def check_fold_digest(study: Any, digest: str | None, source: str) -> None:
    """The study's fold assignment is the first one recorded; any other is refused in one line."""
    if digest is None:
        return
    recorded = study.user_attrs.get(DIGEST_ATTR)
    if recorded is None:
        study.set_user_attr(DIGEST_ATTR, digest)
    elif recorded != digest:
        raise ConfigError(
            "data",
            source,
            f"the fold assignment study {study.study_name!r} was scored on (digest {recorded}); this one is "
            f"{digest}: the posters or the split settings changed (a new hydra.sweeper.study_name starts a new search)",
        )


@contextmanager
def one_sweeper(folder: Path) -> Iterator[None]:
    """Hold the search folder's lock while searching: a second sweeper on the same study is refused,
    and a trial left running in the storage belongs to a sweeper that died (killed, or its node lost)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise ConfigError(
                "hydra.sweep.dir", str(folder), f"a search folder no other sweeper is using ({holder} runs this one)"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _describe(storage: Any) -> str:
    backend = getattr(storage, "_backend", None)
    path = getattr(backend, "_file_path", None)
    return str(path or getattr(storage, "url", storage))


def trial_records(study: Any) -> list[dict[str, Any]]:
    """Each trial as ``search.json`` keeps it (what genre-report reads besides the fold runs)."""
    attrs = ("overrides", "folder", "wall_s", "compared_with", "error", "repeat_of")
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "params": t.params,
            "folds_run": t.user_attrs.get("folds_run", 0),
            "value": t.value,
            **{name: t.user_attrs.get(name) for name in attrs},
        }
        for t in study.get_trials(deepcopy=False)
    ]
