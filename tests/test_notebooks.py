"""The notebooks run top to bottom against a checkpoint made here, so they cannot rot silently."""

import json
import os
from pathlib import Path

import matplotlib
import pytest

from mmf_lightning.cli import MMFLightningCLI

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_runs(notebook, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    cli = MMFLightningCLI(
        args=[
            "fit",
            "--config",
            str(ROOT / "configs/quickstart.yaml"),
            "--trainer.max_steps=3",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--trainer.val_check_interval=3",
        ]
    )
    monkeypatch.setenv("MMF_CKPT", cli.trainer.checkpoint_callback.last_model_path)
    monkeypatch.chdir(ROOT / "notebooks")
    scope: dict = {}
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{notebook.name}", "exec"), scope)  # noqa: S102
    assert os.environ["MMF_CKPT"] == str(scope["CKPT"])
    import matplotlib.pyplot as plt

    assert plt.get_fignums()  # it drew
    plt.close("all")
