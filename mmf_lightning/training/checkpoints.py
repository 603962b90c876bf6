"""Reading a checkpoint file safely: ``torch.load(..., weights_only=True)`` only (a checkpoint is a
file from the internet: its pickle must never run code), with an error that names the file and
says what is wrong instead of torch's unpickler advice."""

import os
import pickle
import zipfile
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

# what torch.load raises for a file it cannot read: a pickle that would run code or build other
# objects (UnpicklingError), a truncated or foreign file (zip reader errors, EOF)
UNREADABLE = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile)


class CheckpointError(ValueError):
    """A file that is missing, truncated, not a checkpoint, or would run code when unpickled."""


def is_unreadable(err: BaseException) -> bool:
    """Whether ``err`` from ``torch.load`` means the file itself is bad (not a bug elsewhere)."""
    return isinstance(err, UNREADABLE) or (isinstance(err, RuntimeError) and "PytorchStreamReader" in str(err))


def checkpoint_error(path: str | os.PathLike, err: BaseException) -> CheckpointError:
    """The error for a file ``torch.load(..., weights_only=True)`` refused with ``err``."""
    if not zipfile.is_zipfile(path) and _looks_like_text(path):
        kind = "a YAML file (a config goes to --config)" if str(path).endswith((".yaml", ".yml")) else "a text file"
        return CheckpointError(
            f"{path} cannot be read as a checkpoint: it is {kind}, not a torch file; pass a .ckpt written by `fit`"
        )
    if isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err):
        why = "its pickle holds objects other than tensors and plain data (loading it could run code)"
    else:
        why = f"it is truncated or not a torch file ({type(err).__name__})"
    return CheckpointError(
        f"{path} cannot be read as a checkpoint: {why}; pass a checkpoint written by `fit` (this tool never "
        "unpickles code)"
    )


def _looks_like_text(path) -> bool:
    head = Path(path).read_bytes()[:512]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def check_exists(path: str | os.PathLike) -> None:
    """``CheckpointError`` naming ``path`` when there is no file there."""
    if Path(path).is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint; pass a .ckpt written by `fit`")
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a .ckpt written by `fit`")


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The checkpoint's dict, loaded with ``weights_only=True``; ``CheckpointError`` otherwise."""
    path = Path(path)
    check_exists(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        if not is_unreadable(err):
            raise
        raise checkpoint_error(path, err) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is a torch file but not a Lightning checkpoint (no state_dict)")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made crash-safe on local and network filesystems: the bytes go
    to a temporary file beside the target, are flushed to disk, and replace the target in one
    rename, so a crash or kill mid-save leaves the previous checkpoint whole. (Lightning's own
    writer stages the file in the system's temp folder, and on another filesystem its final move
    is a copy over the old file.) Remote URLs (``s3://`` ...) keep Lightning's writer. The CLI
    installs it for every run."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        from mmf_lightning.utils.files import atomic_write

        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
