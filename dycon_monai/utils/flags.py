"""Boolean flags as they arrive from the command line, bundle configs and MONAI Label requests."""

from __future__ import annotations

from typing import Any

__all__ = ["as_bool"]


def as_bool(value: Any, name: str = "value") -> bool:
    """Interpret a command-line flag value as a boolean.

    ``python -m monai.bundle run --overwrite true`` passes the string ``"true"``; ``--overwrite True`` and a bare
    ``--overwrite`` pass ``True``. All of them mean the same here.

    Args:
        value: a bool, an int 0/1, or one of the strings true/false, yes/no, on/off, 1/0 (any case).
        name: the option's name, used in the error message.

    Returns:
        The boolean value.

    Raises:
        ValueError: for any other value.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0", "none", ""):
            return False
    if value is None:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}.")
