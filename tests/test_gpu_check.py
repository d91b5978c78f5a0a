"""benchmarks/gpu_check.sh --dry-run: every step that does not need CUDA runs on CPU, at a small size."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_the_gpu_check_runs_its_cpu_steps(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    steps = [json.loads(line) for line in (tmp_path / "out" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == ["packages", "cuda_tests", "data", "binarize", "token_counts", "train_sh",
                                         "load", "glue", "task_distill", "env"]  # fmt: skip
    assert all(s["rc"] == 0 for s in steps)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "bench: skipped (needs CUDA)" in summary and "0 step(s) failed" in summary
    assert "gpu_wheels.sh covers every requirement" in (tmp_path / "out" / "packages.log").read_text()
    assert "skipped" in (tmp_path / "out" / "cuda_tests.log").read_text()  # no GPU here: skipped, with a reason
    assert "'token_str'" in (tmp_path / "out" / "load.log").read_text()  # the fill-mask pipeline answered
    assert json.loads((tmp_path / "out" / "env.json").read_text())["torch"]
    glue = json.loads((tmp_path / "out" / "glue" / "results.json").read_text())  # step 8 on the trained student
    assert glue["tasks"]["sst2"]["metrics"]["sst2"]["accuracy"] >= 0 and glue["model_path"].endswith("run")
    kd = json.loads(next((tmp_path / "out" / "task_distill" / "sst2").glob("lr*_seed42/results.json")).read_text())
    assert kd["teacher"]["path"] == str(next((tmp_path / "out" / "glue" / "sst2").glob("lr*_seed42")) / "model")
    assert kd["teacher"]["teacher_logits"] == "computed once" and kd["steps"] == 6
