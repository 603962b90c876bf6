"""Starting a network from another run's weights (a warm start): a flow-matching checkpoint of ours, whose
u(z, t, t) is already the instantaneous velocity, so its weights carry over as they are; or a plain state dict
of the same network, with a key mapping. Read with ``weights_only`` (never unpickles code)."""

import os
from pathlib import Path

import torch
from torch import nn

from mmf_lightning.training.checkpoints import CheckpointError, check_exists, checkpoint_error, is_unreadable

SHOWN = 5  # keys named per kind of mismatch


def initial_state(path: str | os.PathLike, key_map: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """The network weights in ``path``, keys renamed by ``key_map``.

    ``path``: a checkpoint written by ``fit`` (its ``net.*`` weights: the EMA weights when that run used EMA),
    or a file holding a state dict ``{name: tensor}`` (also under a ``"state_dict"`` key).
    ``key_map``: ``{old prefix: new prefix}``, the first matching prefix of each key replaced, e.g.
    ``{"module.": ""}`` for a DDP-wrapped model's, ``{"model.": ""}`` for a wrapper's.
    """
    path = Path(path)
    check_exists(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if not is_unreadable(err):
            raise
        raise checkpoint_error(path, err) from err
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if isinstance(loaded, dict) and "pytorch-lightning_version" in loaded:  # a run of ours: the module's net
        state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
        if not state:
            raise CheckpointError(f"{path} is a Lightning checkpoint with no 'net.' weights")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict (a mapping of names to tensors)")
    return _renamed(state, key_map or {}, path)


def _renamed(state: dict, key_map: dict[str, str], path: Path) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        new = next((to + key[len(old) :] for old, to in key_map.items() if key.startswith(old)), key)
        if new in renamed:
            raise ValueError(f"init_key_map {key_map} maps two weights of {path} to {new!r}")
        renamed[new] = value
    return renamed


def load_initial_weights(net: nn.Module, path: str | os.PathLike, key_map: dict[str, str] | None = None) -> int:
    """Loads ``initial_state(path, key_map)`` into ``net``; the number of tensors loaded. Every key must match, with
    its shape: otherwise a ValueError names the missing, unexpected and mis-shaped keys."""
    state, own = initial_state(path, key_map), net.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the network"
        for k in sorted(own.keys() & state.keys())
        if state[k].shape != own[k].shape
    ]
    problems = [
        f"{len(keys)} {what}: {', '.join(keys[:SHOWN])}{', ...' if len(keys) > SHOWN else ''}"
        for what, keys in (
            ("missing from the file", missing),
            ("not in the network", unexpected),
            ("shapes differ", shapes),
        )
        if keys
    ]
    if problems:
        raise ValueError(
            f"cannot start {type(net).__name__} from {path}: " + "; ".join(problems) + ". Build the network with the "
            "same arguments as the run that wrote the file, or rename keys with model.init_key_map "
            "({old prefix: new prefix})"
        )
    net.load_state_dict(state)
    return len(state)
