"""A quiet console: third-party messages the user cannot act on are dropped, narrowly (by module,
category and message), so every other warning still shows.

- Lightning's own use of a deprecated torch pytree API (``isinstance(treespec, LeafSpec)``);
- ``torch.jit.script`` deprecation, raised from inside torch while a library scripts a function;
- Lightning's "💡 Tip: ... litlogger" advertisement at every Trainer start.
"""

import logging
import warnings

THIRD_PARTY_WARNINGS = [
    # (message regex, category, module regex of the warning's origin)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", Warning, r"lightning\.pytorch\.utilities\._pytree"),
    (r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit\._script"),
    # a resumed run continues in its own folder, and our sampler resumes mid-epoch (data.base.ResumableSampler)
    (r"Checkpoint directory .* exists and is not empty", UserWarning, r"lightning\.pytorch"),
    (r"You're resuming from a checkpoint that ended before the epoch ended", UserWarning, r"lightning\.pytorch"),
]


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet_third_party() -> None:
    """Install the filters (idempotent)."""
    for message, category, module in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTips())


def progress(iterable, total: int | None = None, **kwargs):
    """``tqdm`` over ``iterable``; when stderr is not a terminal (a log file, a batch job), a line every 4% instead
    of a redraw every tenth of a second, so a log holds a few dozen lines, not megabytes of bar."""
    import sys

    from tqdm.auto import tqdm

    if not sys.stderr.isatty():
        size = total if total is not None else len(iterable) if hasattr(iterable, "__len__") else None
        if size:
            kwargs.setdefault("miniters", max(1, size // 25))
            kwargs.setdefault("mininterval", 0)
    return tqdm(iterable, total=total, **kwargs)
