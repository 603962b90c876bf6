"""Reading a W&B run file back (mmf_lightning.runs.wandb_files): a real offline run, its config larger
than one 32 KiB block (records split across blocks), and the same file cut short and corrupted."""

import pytest

from mmf_lightning.runs.wandb_files import BLOCK, read_run


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    import wandb

    root = tmp_path_factory.mktemp("wandb")
    big = {f"key_{i}": "x" * 100 for i in range(800)}  # ~90 KB of config: one record over three blocks
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        run = wandb.init(project="t", dir=str(root), config={"lr": 1e-3})
        run.config.update({"model": {"width": 256}, "big": big})
        for step in range(3):
            run.log({"train/loss": 1.0 / (step + 1)}, step=step)
        run.finish()
    (folder,) = (root / "wandb").glob(f"offline-run-*-{run.id}")
    return folder, big


def test_a_finished_run_reads_back_whole(offline_run):
    folder, big = offline_run
    run = read_run(folder, wait=60)
    assert run.finished
    assert run.config["lr"] == 1e-3 and run.config["model"] == {"width": 256} and run.config["big"] == big
    assert [row["train/loss"] for row in run.history] == [1.0, 0.5, 1.0 / 3]
    assert (next(folder.glob("run-*.wandb"))).stat().st_size > 2 * BLOCK


def test_a_file_cut_short_reads_what_is_whole_and_waiting_for_it_times_out(offline_run, tmp_path):
    folder, _ = offline_run
    data = next(folder.glob("run-*.wandb")).read_bytes()
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "run-x.wandb").write_bytes(data[: len(data) - 40])  # inside the last records, the exit among them
    run = read_run(cut)
    assert not run.finished and run.config["model"] == {"width": 256}
    with pytest.raises(TimeoutError, match=r"run-x\.wandb: no exit record after 0.5 s"):
        read_run(cut, wait=0.5)


def test_a_corrupted_record_is_an_error_naming_the_file(offline_run, tmp_path):
    folder, _ = offline_run
    data = bytearray(next(folder.glob("run-*.wandb")).read_bytes())
    data[BLOCK + 100] ^= 0xFF  # inside the big config record
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run-y.wandb").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"run-y\.wandb: bad record checksum at byte"):
        read_run(bad)
