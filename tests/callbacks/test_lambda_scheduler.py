"""lambda is advanced every optimizer step and survives a resume."""

import json

from helpers import LambdaRecorder, quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from mmf_lightning import MeanFlowModule
from mmf_lightning.callbacks import LambdaScheduler
from mmf_lightning.data import ToyDataModule
from mmf_lightning.nets import MLP
from mmf_lightning.objectives import LinearWarmup, ModularMeanFlow


def _fit(tmp_path, max_steps, ckpt_path=None, accumulate=1):
    module = MeanFlowModule(MLP(dim=2, width=16, depth=1), ModularMeanFlow())
    schedule = LinearWarmup(10)
    trainer = quiet_trainer(
        tmp_path,
        max_steps=max_steps,
        limit_val_batches=0,
        accumulate_grad_batches=accumulate,
        callbacks=[
            LambdaScheduler(schedule),
            LambdaRecorder(str(tmp_path / "lam.jsonl")),
            ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1),
        ],
    )
    trainer.fit(module, ToyDataModule(num_train=4096, batch_size=32), ckpt_path=ckpt_path)
    return schedule


def _recorded(tmp_path):
    return [json.loads(line) for line in (tmp_path / "lam.jsonl").read_text().splitlines()]


def test_lambda_follows_the_schedule_across_a_resume(tmp_path):
    schedule = _fit(tmp_path, max_steps=6)
    _fit(tmp_path, max_steps=14, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    rows = _recorded(tmp_path)
    assert [step for step, _ in rows] == list(range(14))  # the resumed run starts at step 6, not 0
    assert [lam for _, lam in rows] == [schedule(k) for k in range(14)]
    assert rows[-1][1] == 1.0


def test_lambda_advances_per_optimizer_step_not_per_batch(tmp_path):
    schedule = _fit(tmp_path, max_steps=3, accumulate=2)
    rows = _recorded(tmp_path)
    assert rows == [[k, schedule(k)] for k in (0, 0, 1, 1, 2, 2)]
