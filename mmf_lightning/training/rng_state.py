"""Every rank's random streams, into a checkpoint as plain data and back, so a resumed run draws
what the uninterrupted one would (docs/launch.md "Resume and determinism")."""

import torch


def gather_rng(strategy) -> dict:
    """Every rank's torch (CPU and current CUDA device), numpy and Python random states, as plain
    tensors and lists (a checkpoint stays ``weights_only``-loadable): rank -> state."""
    import random

    import numpy as np

    kind, keys, pos, gauss, cached = np.random.get_state()
    mine = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(gauss), float(cached)],
        "python": [list(v) if isinstance(v, tuple) else v for v in random.getstate()],
    }
    world = strategy.world_size
    if world == 1:
        return {"world_size": 1, "ranks": [mine]}
    import torch.distributed as dist

    everyone = [None] * world
    dist.all_gather_object(everyone, mine)  # small: a few KB a rank, once per checkpoint
    return {"world_size": world, "ranks": everyone}


def restore_rng(state: dict, rank: int, world_size: int) -> None:
    """Set this rank's random streams from ``gather_rng``'s record (a warning, and nothing else,
    when the world size differs: then the streams cannot continue as they were)."""
    import random

    import numpy as np

    if state.get("world_size") != world_size:
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(
            f"the checkpoint holds the random streams of {state.get('world_size')} rank(s), this run has {world_size}: "
            "training goes on with fresh ones (not bit-identical to an uninterrupted run)"
        )
        return
    mine = state["ranks"][rank]
    torch.set_rng_state(mine["torch"])
    if mine.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine["cuda"])
    keys, pos, gauss, cached = mine["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, gauss, cached))
    version, internal, gauss_next = mine["python"]
    random.setstate((version, tuple(internal), gauss_next))


def rank_seed(seed: int, rank: int) -> int:
    """The seed of ``rank``'s random streams in a run seeded ``seed``: the seed itself on rank 0 (a one-device run
    draws what rank 0 of a DDP run does), else a 62-bit hash of (seed, rank) with bit 62 set. ``seed + rank`` would
    give rank 1 of the seed-0 run the streams of rank 0 of the seed-1 run: a DDP seed sweep would repeat itself.
    Here no rank > 0 shares a stream with any seed below 2^62, nor (up to hash collisions) with another pair."""
    if rank == 0:
        return seed
    import numpy as np

    state = np.random.SeedSequence([seed % 2**64, rank]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 30 ^ int(state[1])) % 2**62 | 1 << 62
