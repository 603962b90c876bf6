"""Objects that remember how they were built, so a checkpoint can rebuild them.

LightningCLI stores the YAML of ``net`` and ``objective`` in a checkpoint's hyperparameters.
A module built in Python (a notebook, a test) has only the objects; ``init_config`` turns
them back into the same ``class_path`` / ``init_args`` form, so ``load_from_checkpoint``
works for both.
"""

import inspect
import math
from typing import Any

MAX_COUNT = 10**12  # more than any run takes or any set holds: larger counts are typing errors


def check_count(name: str, value, minimum: int = 0, unit: str = "") -> int:
    """A count from a config (steps, items, workers): a whole number in [minimum, 1e12]; NaN,
    infinities, fractions and booleans are errors naming the value."""
    whole = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not whole or not minimum <= value <= MAX_COUNT or value != int(value):
        raise ValueError(f"{name} must be a whole number{unit} in [{minimum}, {MAX_COUNT:.0e}], got {value!r}")
    return int(value)


class RecordsInit:
    """Mixin: keeps the arguments passed to ``__init__`` in ``self._init_args``."""

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(obj, *args, **kwargs)
        except TypeError:  # copy / pickle call __new__ without the init arguments
            return obj
        obj._init_args = {k: v for k, v in list(bound.arguments.items())[1:]}
        return obj


def init_config(obj: Any) -> dict | None:
    """``{"class_path": ..., "init_args": {...}}`` for an object built from plain values, else None."""
    args = getattr(obj, "_init_args", None)
    if args is None:
        return None
    plain = {}
    for key, value in args.items():
        value = _plain(value)
        if value is _UNRECORDABLE:
            return None
        plain[key] = value
    return {"class_path": f"{type(obj).__module__}.{type(obj).__qualname__}", "init_args": plain}


_UNRECORDABLE = object()


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _UNRECORDABLE if any(v is _UNRECORDABLE for v in items) else items
    if isinstance(value, dict):
        items = {k: _plain(v) for k, v in value.items()}
        return _UNRECORDABLE if any(v is _UNRECORDABLE for v in items.values()) else items
    nested = init_config(value)
    return _UNRECORDABLE if nested is None else nested
