"""The notebooks run top to bottom in a real Jupyter kernel (nbclient), the way people run them,
against folders of small runs made here, so they cannot rot silently; committed, they carry no
outputs."""

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# the folder of runs each notebook is pointed at ($MMF_RUNS): the study its figure comes from
FOLDER = {
    "analyse_run": "conditional",  # a class-conditional run: its guidance cell draws too
    "fig1_loss_curves": "toy2d",
    "fig2_velocity_fields": "toy2d",
    "fig3_fid": "digits",
    "fig4_diversity_stability": "digits",
    "fig5_paths": "toy2d",
    "fig6_trajectories": "trajectories",
}


def test_every_notebook_is_run_here_and_committed_without_outputs():
    assert {p.stem for p in NOTEBOOKS} == set(FOLDER)
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} has outputs"


def execute(path: Path, runs: Path, torch_home: Path) -> nbformat.NotebookNode:
    """``path`` run top to bottom in a kernel of its own, pointed at the folder of runs ``runs``."""
    env = {
        **os.environ,
        "MMF_RUNS": str(runs),  # what a user sets to point a notebook at a folder
        "MMF_CKPT": str(next(runs.rglob("last.ckpt"))),
        "MMF_EVALUATIONS": str(runs / "evaluation"),
        "TORCH_HOME": str(torch_home),  # LPIPS' backbone (untrained, trusted)
    }
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute(env=env)
    return notebook


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom_in_a_kernel(path, paper_runs, torch_home_with_alexnet):
    # each test runs its own notebook: one kernel per notebook whichever xdist worker takes it
    notebook = execute(path, paper_runs[FOLDER[path.stem]], torch_home_with_alexnet)
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    figure_cells = [c for c in notebook.cells if c.cell_type == "code" and "figures." in c.source.splitlines()[-1]]
    assert len(images) >= max(1, len(figure_cells)), f"{path.name} drew {len(images)} figures"
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    if path.stem == "analyse_run":
        assert "1-step samples per class at guidance scales (1.0, 2.0, 3.0), in one forward a jump" in text, text
    else:  # every run of the folder was found and labelled
        runs = paper_runs[FOLDER[path.stem]]
        assert text.count(" -> ") >= len({p.parents[1] for p in runs.rglob("last.ckpt")}), text
