"""Which distributed strategies the training step runs under, checked before training.

- DDP: yes (the JVP runs on the inner network; ``objectives.jvp``).
- FSDP2 (``MeanFlowModule(shard=True)`` under Lightning's ``ModelParallelStrategy``): yes. ``torch.func.jvp`` runs
  through the sharded forward, whose hooks gather the parameters; a net's explicit JVP would bypass those hooks,
  so ``objectives.jvp`` does not take it on a sharded net. Tested on 2 CPU processes (tests/test_sharding.py).
- FSDP1 (Lightning's ``FSDPStrategy``): ``torch.func.jvp`` fails on its wrapped modules (public reports), and
  Lightning runs it on GPUs only, so it is not tested here: refused unless du/dt comes from the finite difference.
"""

from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard

__all__ = ["FSDPModule", "check_sharding", "fully_shard", "sharded_blocks"]

# callbacks that run the network on one rank only, or keep an unsharded copy of it: they cannot follow a sharded net
NOT_SHARDED = ("EMAWeightAveraging", "SampleFigures", "PathMetrics", "FID", "SpikeRollback")


def sharded_blocks(net: nn.Module) -> list[nn.Module]:
    """The units FSDP2 shards one by one before the whole net (so one block's weights are gathered at a time): a
    DiT's transformer blocks. Each must be called as a module (FSDP2 gathers in its forward hooks)."""
    blocks = getattr(net, "blocks", None)
    return list(blocks) if isinstance(blocks, nn.ModuleList) else []


def check_sharding(trainer, objective, shard: bool) -> None:
    """A ValueError naming the combination, for one the training step cannot run under."""
    strategy = type(trainer.strategy).__name__
    uses_jvp = getattr(objective, "uses_lambda", False)
    exact_jvp = uses_jvp and getattr(objective, "finite_difference_step", None) is None
    if isinstance(trainer.strategy, FSDPStrategy) and exact_jvp:
        raise ValueError(
            f"trainer.strategy={strategy} (FSDP1) with {type(objective).__name__}'s exact JVP: torch.func.jvp fails on "
            "FSDP1's wrapped modules. Use lightning.pytorch.strategies.ModelParallelStrategy with model.shard: true "
            "(FSDP2, tested), or set the objective's finite_difference_step (docs/launch.md)"
        )
    if shard and not isinstance(trainer.strategy, ModelParallelStrategy):
        raise ValueError(
            "model.shard: true needs trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy, "
            f"got {strategy}"
        )
    if isinstance(trainer.strategy, ModelParallelStrategy) and not shard:
        raise ValueError(f"trainer.strategy={strategy} shards nothing unless model.shard: true")
    if shard:
        unsupported = sorted({type(cb).__name__ for cb in trainer.callbacks} & set(NOT_SHARDED))
        if unsupported:
            raise ValueError(
                f"model.shard: true cannot run the callbacks {unsupported} (they run the network on one rank, or keep "
                "an unsharded copy of it); leave them out of trainer.callbacks and evaluate the checkpoint afterwards"
            )
