"""benchmarks/gpu_check.py in its --tiny mode (small nets, a few steps, on the CPU): every section runs or says why
it does not apply, so the script a GPU session runs in one go has run here first."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_every_section_in_tiny_mode(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--tiny", "--out", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT / "benchmarks")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check_tiny.json").read_text())
    for section in ("cost", "syncs", "runs", "fid", "attention"):
        assert "error" not in results[section], results[section].get("traceback", results[section])
    for net in ("unet_cifar10", "dit_b2"):
        rows = results["cost"][net]["rows"]
        for name in ("fm", "lam0", "lam1", "recommended", "fd", "fm compiled"):
            assert rows[name]["seconds"] > 0 and rows[name]["time_over_fm"] > 0, (net, name, rows[name])
        assert rows["fm"]["time_over_fm"] == 1.0
    run = results["runs"]["cifar10_recommended_synthetic"]
    assert run["steps"] == 5 and run["hours_for_config_steps"] == run["seconds_per_step"] * 800_000 / 3600
    assert results["runs"]["digits_quick"]["steps"] == 5
    assert set(results["fid"]["values"]) == {"1", "2"} and results["fid"]["num_samples"] == 64
    assert "not_applicable" in results["syncs"] and "not_applicable" in results["attention"]  # no CUDA here
    table = (tmp_path / "gpu_check_tiny.md").read_text()
    assert "## Cost: unet_cifar10, batch 4" in table and "| recommended |" in table
