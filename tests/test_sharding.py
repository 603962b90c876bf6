"""The strategies the training step cannot run under are refused before training, each naming the combination
and the fix (the FSDP2 run itself: tests/test_cli.py::test_fsdp2_two_ranks_lambda_one_gradients_agree)."""

from types import SimpleNamespace

import pytest
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy

from mmf_lightning.callbacks import EMAWeightAveraging, LambdaScheduler, SampleFigures
from mmf_lightning.nets import MLP, DiT
from mmf_lightning.objectives import FlowMatching, ModularMeanFlow
from mmf_lightning.training.sharding import check_sharding, sharded_blocks


def _trainer(strategy, *callbacks):
    return SimpleNamespace(strategy=strategy, callbacks=[LambdaScheduler(), *callbacks])


def test_fsdp1_is_refused_with_the_exact_jvp_and_allowed_with_the_finite_difference():
    with pytest.raises(
        ValueError, match=r"FSDPStrategy \(FSDP1\) with ModularMeanFlow's exact JVP.*ModelParallelStrategy"
    ):
        check_sharding(_trainer(FSDPStrategy()), ModularMeanFlow(), shard=False)
    check_sharding(_trainer(FSDPStrategy()), ModularMeanFlow(finite_difference_step=1e-3), shard=False)
    check_sharding(_trainer(FSDPStrategy()), FlowMatching(), shard=False)  # no JVP at all


def test_shard_and_model_parallel_go_together_without_single_rank_callbacks():
    with pytest.raises(ValueError, match="model.shard: true needs trainer.strategy=.*ModelParallelStrategy, got DDP"):
        check_sharding(_trainer(DDPStrategy()), ModularMeanFlow(), shard=True)
    with pytest.raises(ValueError, match="ModelParallelStrategy shards nothing unless model.shard: true"):
        check_sharding(_trainer(ModelParallelStrategy()), ModularMeanFlow(), shard=False)
    with pytest.raises(ValueError, match=r"cannot run the callbacks \['EMAWeightAveraging', 'SampleFigures'\]"):
        check_sharding(
            _trainer(ModelParallelStrategy(), EMAWeightAveraging(), SampleFigures()), ModularMeanFlow(), True
        )
    check_sharding(_trainer(ModelParallelStrategy()), ModularMeanFlow(), shard=True)
    check_sharding(_trainer(DDPStrategy()), ModularMeanFlow(), shard=False)


def test_a_dit_is_sharded_block_by_block():
    dit = DiT(in_channels=1, image_size=8, patch_size=2, width=32, depth=3, heads=2)
    assert sharded_blocks(dit) == list(dit.blocks) and sharded_blocks(MLP()) == []
