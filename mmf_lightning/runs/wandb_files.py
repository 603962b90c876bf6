"""Reads a W&B run back from its local ``run-<id>.wandb`` file (online and offline runs both write one;
wandb >= 0.31 keeps the config, history and file list only there), for ``runs`` and tests. The file
is leveldb-log framed: a 7-byte file header, then 32 KiB blocks of records, each with a 7-byte
header (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last) and a payload; the
payloads of a full record, or of first + middles + last, are one ``wandb_internal_pb2.Record``."""

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

HEADER = 7
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path):
    """Every Record of the file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (it does not start with ':W&B')")
    pos, parts = HEADER, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if crc == 0 and length == 0 and kind == 0:  # zero padding at a block's end
            pos += left
            continue
        payload = data[pos + HEADER : pos + HEADER + length]
        if zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF != crc:
            if pos + HEADER + length > len(data):  # a run still writing, or killed mid-record: its last record is cut
                return
            raise ValueError(f"{path}: bad record checksum at byte {pos}")
        pos += HEADER + length
        if kind == FULL:
            parts = [payload]
        elif kind == FIRST:
            parts = [payload]
            continue
        elif kind == MIDDLE:
            parts.append(payload)
            continue
        else:
            parts.append(payload)
        record = wandb_internal_pb2.Record()
        record.ParseFromString(b"".join(parts))
        yield record


@dataclass
class OfflineRun:
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    finished: bool = False  # the run's exit record is in the file: nothing more will be written
    name: str = ""  # the run's display name


def read_run(run_folder: str | Path, wait: float = 0.0) -> OfflineRun:
    """The config (values JSON-decoded), history rows, file paths and summary of a W&B run folder
    (``wandb/offline-run-<time>-<id>`` or ``wandb/run-<time>-<id>``).

    ``wait``: seconds to wait for the run's exit record. W&B's service process writes the file, and
    may still be writing it when ``run.finish()`` has returned in the training process; a reader
    that needs the whole run (a test) waits, one that shows a run in progress (``runs``) does not."""
    found = sorted(Path(run_folder).glob("run-*.wandb"))
    if len(found) != 1:
        raise ValueError(f"{run_folder}: expected one run-*.wandb file, found {len(found)}")
    deadline = time.monotonic() + wait
    while True:
        run = _read(found[0])
        if run.finished or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if wait and not run.finished:
        raise TimeoutError(f"{found[0]}: no exit record after {wait:g} s; W&B is still writing it, or it crashed")
    return run


def _read(path: Path) -> OfflineRun:
    run = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "exit":
            run.finished = True
            continue
        if kind == "run":
            run.name = record.run.display_name or run.name
            items = record.run.config.update
        elif kind == "config":
            items = record.config.update
        elif kind == "history":
            run.history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
            continue
        elif kind == "summary":
            run.summary.update(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update}
            )
            continue
        elif kind == "files":
            run.files += [f.path for f in record.files.files]
            continue
        else:
            continue
        for item in items:
            run.config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return run
