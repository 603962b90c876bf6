"""A fingerprint of a dataset's contents, to key caches of statistics computed from it.

The fingerprint is the dataset's length and a SHA-256 over what it is made of, found by walking
the dataset object:

- in-memory arrays and tensors (CIFAR-10's ``data``, the digits, ``ArrayImages``): their bytes
  (SHA-256 runs at about 1 GB/s: CIFAR-10's 150 MB in a fraction of a second);
- memory-mapped arrays (ImageNet-64's ``.npy`` cache): the file's name, size and modification
  time, never its 16 GB of bytes;
- image folders (torchvision's ``DatasetFolder``/``ImageFolder``): every file's path relative to
  the root, size and modification time (one ``stat`` per file, with a progress bar for large sets);
- ``Subset``: its indices, then its dataset; transforms and other modules: their ``repr`` (which
  names their parameters); other objects: their type and attributes, recursively.

A dataset class can define ``fingerprint() -> str`` to say itself what identifies its contents
(e.g. a set read from a database). Contents the walk cannot see (bytes behind an open file handle)
are not in the fingerprint: such a set must define ``fingerprint()``.
"""

import hashlib
import io
import os
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmf_lightning.utils.console import progress

_CHUNK = 64 << 20  # bytes hashed at a time
_PROGRESS_FILES = 20_000  # stat'ing more files than this shows a progress bar
_PROGRESS_BYTES = 1 << 30  # hashing more bytes than this shows a progress bar
_MAX_DEPTH = 12


def weights_hash(module: nn.Module) -> str:
    """12 hex digits of a SHA-1 over a module's state dict (as ``torch.save`` writes it): a retrained or
    other network gets another hash. Keys the FID statistics' and the latents' caches."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buffer)
    return hashlib.sha1(buffer.getvalue()).hexdigest()[:12]


def dataset_fingerprint(dataset) -> str:
    """``n<len>-<sha256 prefix>``: equal for the same contents, different when a file, an array,
    the indices or the transform differ."""
    h = hashlib.sha256()
    _Walker(h).feed(dataset, 0)
    return f"n{len(dataset)}-{h.hexdigest()[:24]}"


def _memmap_file(a: np.ndarray) -> str | None:
    """The file behind a memory-mapped array (or a view of one), else None."""
    while isinstance(a, np.ndarray):
        if isinstance(a, np.memmap) and getattr(a, "filename", None):
            return a.filename
        a = a.base
    return None


class _Walker:
    def __init__(self, h):
        self.h = h
        self.seen: dict[int, int] = {}

    def tag(self, *parts) -> None:
        self.h.update(("\x1f".join(map(str, parts)) + "\x1e").encode())

    def feed(self, obj, depth: int) -> None:
        if depth > _MAX_DEPTH:
            self.tag("deep", type(obj).__qualname__)
            return
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            self.tag("v", type(obj).__name__, repr(obj))
            return
        if isinstance(obj, Path):
            self.tag("path", obj)
            return
        if id(obj) in self.seen:  # shared or cyclic references: the order of first visits
            self.tag("seen", self.seen[id(obj)])
            return
        self.seen[id(obj)] = len(self.seen)
        own = getattr(obj, "fingerprint", None)
        if callable(own) and not isinstance(obj, type):
            self.tag("own", type(obj).__qualname__, own())
        elif isinstance(obj, torch.Tensor):
            self.array(obj.detach().cpu().numpy())
        elif isinstance(obj, np.ndarray):
            self.array(obj)
        elif isinstance(obj, (list, tuple, range)):
            self.sequence(obj, depth)
        elif isinstance(obj, dict):
            self.tag("dict", len(obj))
            for key in sorted(obj, key=repr):
                self.feed(key, depth + 1)
                self.feed(obj[key], depth + 1)
        elif isinstance(obj, torch.utils.data.Subset):
            self.tag("subset")
            self.array(np.asarray(obj.indices, dtype=np.int64))
            self.feed(obj.dataset, depth + 1)
        elif _is_folder(obj):
            self.folder(obj, depth)
        elif isinstance(obj, nn.Module):  # torchvision transforms: the repr names every parameter
            self.tag("module", type(obj).__qualname__, repr(obj))
        elif isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)):
            self.tag("fn", getattr(obj, "__module__", ""), getattr(obj, "__qualname__", repr(obj)))
        elif hasattr(obj, "__dict__"):
            self.tag("obj", type(obj).__module__, type(obj).__qualname__)
            self.feed(vars(obj), depth + 1)
        else:
            self.tag("opaque", type(obj).__qualname__)

    def sequence(self, seq, depth: int) -> None:
        self.tag(type(seq).__name__, len(seq))
        if len(seq) and all(isinstance(v, (bool, int, float)) for v in seq):
            self.array(np.asarray(seq))
            return
        for v in seq:
            self.feed(v, depth + 1)

    def array(self, a: np.ndarray) -> None:
        self.tag("array", a.dtype.str, a.shape, a.strides if _memmap_file(a) else "")
        path = _memmap_file(a)
        if path is not None:  # a memory map: the file's identity, not its (possibly huge) bytes
            st = os.stat(path)
            offset = a.__array_interface__["data"][0]
            try:
                offset -= np.frombuffer(a._mmap, np.uint8).__array_interface__["data"][0]
            except (AttributeError, TypeError, ValueError):
                offset = getattr(a, "offset", 0)
            self.tag("memmap", os.path.abspath(path), st.st_size, st.st_mtime_ns, offset)
            return
        if a.dtype == object:
            self.sequence(a.tolist(), 0)
            return
        data = memoryview(np.ascontiguousarray(a)).cast("B")
        chunks = range(0, len(data), _CHUNK)
        for start in progress(chunks, desc="fingerprint (bytes)", disable=len(data) < _PROGRESS_BYTES, leave=False):
            self.h.update(data[start : start + _CHUNK])

    def folder(self, dataset, depth: int) -> None:
        """torchvision's DatasetFolder: the files' names under the root, sizes and mtimes, the
        classes, and how files are loaded and transformed."""
        root = Path(dataset.root)
        self.tag("folder", type(dataset).__qualname__, len(dataset.samples))
        samples = dataset.samples
        for path, target in progress(
            samples, desc=f"fingerprint {root}", unit="file", disable=len(samples) < _PROGRESS_FILES, leave=False
        ):
            st = os.stat(path)
            try:
                name = os.path.relpath(path, root)
            except ValueError:  # another drive (Windows)
                name = path
            self.tag(name, st.st_size, st.st_mtime_ns, target)
        for key in ("classes", "class_to_idx", "loader", "transform", "target_transform", "transforms"):
            self.tag(key)
            self.feed(getattr(dataset, key, None), depth + 1)


def _is_folder(obj) -> bool:
    try:
        from torchvision.datasets import DatasetFolder
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return False
    return isinstance(obj, DatasetFolder)
