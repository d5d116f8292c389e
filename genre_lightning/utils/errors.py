"""Errors a user can fix, reported as one line that names the key, the value and what is valid."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


class ConfigError(ValueError):
    """A config value that cannot work. ``str(err)`` is the single line shown to the user."""

    def __init__(self, key: str, value: Any, valid: str) -> None:
        self.key, self.value, self.valid = key, value, valid
        super().__init__(f"{key}={value!r} is not valid: expected {valid}")


class UserFacingError(RuntimeError):
    """A problem outside the config (network, files) with a one-line explanation and a fix."""


def exit_on_user_error(task: F) -> F:
    """Print a user error as one line and exit with status 2, instead of a stack trace."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except Exception as err:
            user_error = find_user_error(err)
            if user_error is None:
                raise
            print(f"error: {user_error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]


def find_user_error(err: BaseException | None) -> BaseException | None:
    """The user error itself, also when a library wrapped it (Hydra's instantiate does)."""
    while err is not None:
        if isinstance(err, ConfigError | UserFacingError):
            return err
        err = err.__cause__ or err.__context__
    return None
