"""Files that several processes (DDP ranks, nodes on a shared disk, two runs) may create at once.

``atomic_write`` gives every writer its own temporary name beside the target and moves the
finished file into place in one step (``os.replace``): a reader sees the old file or the new one,
never half of one, and two writers never write into the same temporary file. ``file_lock`` makes
the slow creation of a cache happen once: the first process builds, the others wait and then find
the file (check again after taking the lock).
"""

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike) -> Iterator[Path]:
    """Yields a fresh temporary path beside ``target``; write the whole file there. On success it
    replaces ``target`` atomically; on any error it is removed and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_lock(target: str | os.PathLike, timeout: float = -1):
    """An inter-process lock for creating ``target`` (the lock file ``<target>.lock`` stays beside
    it: removing it while another process waits would break the lock)."""
    from filelock import FileLock

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(target.with_name(target.name + ".lock")), timeout=timeout)
