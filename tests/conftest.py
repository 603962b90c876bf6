import os
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one thread each, and for what they start
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


os.environ["MMF_LIGHTNING_OFFLINE"] = "1"  # nothing downloads in the suite: missing weights are an error


@pytest.fixture(scope="session")
def torch_home_with_alexnet(tmp_path_factory):
    """A $TORCH_HOME whose hub cache holds an AlexNet weights file under torchvision's name,
    untrained (the real file cannot be downloaded here): LPIPS loads it through its real path.
    Its digest is not the pinned one, so the file is declared trusted the documented way
    ($MMF_LIGHTNING_TRUST_WEIGHTS, inherited by the CLI subprocesses); the default refusal of
    such a file is tested in tests/metrics/test_weights.py."""
    import torchvision

    from mmf_lightning.metrics.weights import TRUST_ENV, WEIGHTS

    home = tmp_path_factory.mktemp("torch_home")
    target = home / "hub" / "checkpoints" / WEIGHTS["alexnet"][0].rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), target)
    trusted = [p for p in os.environ.get(TRUST_ENV, "").split(os.pathsep) if p]
    os.environ[TRUST_ENV] = os.pathsep.join([*trusted, str(target)])
    return home


def shared_folder(tmp_path_factory, name: str) -> Path:
    """A folder that every pytest-xdist worker of this session shares (their temp folders' parent), or this
    session's own without xdist: what one worker trains there, the others read."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    (base / name).mkdir(exist_ok=True)
    return base / name


@pytest.fixture(scope="session")
def paper_runs(tmp_path_factory):
    """Folders of short real runs of the paper's studies (tests/paper_runs.py), made on first use, once per session
    whatever the number of xdist workers."""
    from paper_runs import PaperRuns

    return PaperRuns(shared_folder(tmp_path_factory, "paper_runs"))
