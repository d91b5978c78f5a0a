"""benchmarks/gpu_check.sh --dry-run: every step that does not need CUDA runs on CPU, at a small size, both
where GLUE's real SST-2 lies at ../shared/data/glue and in a clone that has no ../shared (the generated
stand-in); a step whose input step failed is not run and names that step."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from benchmarks import gpu_setup
from conftest import ROOT

SHARED_SST2 = ROOT.parent / "shared" / "data" / "glue" / "SST-2"
STEPS = ["packages", "cuda_tests", "data", "binarize", "token_counts", "train_sh", "load", "glue", "task_distill",
         "qa_data", "qa", "qa_distill", "inference", "env"]


def clone(dest):
    """The repository's tracked files at dest, as a fresh clone has them (no ../shared beside it)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in filter(None, files.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def dry_run(repo, out, **env):
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, **env)
    return subprocess.run(["bash", str(repo / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)


def check_complete_dry_run(proc, out):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == STEPS
    assert all(s["rc"] == 0 for s in steps)
    summary = (out / "summary.md").read_text()
    assert "bench: skipped (needs CUDA)" in summary and "0 step(s) failed" in summary
    assert "gpu_wheels.sh covers every requirement" in (out / "packages.log").read_text()
    assert "skipped" in (out / "cuda_tests.log").read_text()  # no GPU here: skipped, with a reason
    assert "'token_str'" in (out / "load.log").read_text()  # the fill-mask pipeline answered
    assert json.loads((out / "env.json").read_text())["torch"]
    glue = json.loads((out / "glue" / "results.json").read_text())  # step 8 on the trained student
    assert glue["model_path"].endswith("run")
    run = json.loads(next((out / "glue" / "sst2").glob("lr*_seed42/results.json")).read_text())
    n, accuracy = run["hyper_parameters"]["eval_examples"]["sst2"], run["metrics"]["sst2"]["accuracy"]
    assert n > 0 and 0 <= accuracy <= 1 and round(accuracy * n) == pytest.approx(accuracy * n)  # a share of n rows
    assert glue["tasks"]["sst2"]["score"] == pytest.approx(100 * accuracy)
    kd = json.loads(next((out / "task_distill" / "sst2").glob("lr*_seed42/results.json")).read_text())
    assert kd["teacher"]["path"] == str(next((out / "glue" / "sst2").glob("lr*_seed42")) / "model")
    assert kd["teacher"]["teacher_logits"] == "computed once" and kd["steps"] == 6
    qa_teacher = next((out / "qa" / "squad").glob("lr*_seed42"))
    assert (qa_teacher / "model" / "model.safetensors").is_file() and "exact_match" in summary
    qa_kd = json.loads(next((out / "qa_distill" / "squad").glob("lr*_seed42/results.json")).read_text())
    assert qa_kd["teacher"]["path"] == str(qa_teacher / "model") and qa_kd["steps"] == 4
    inference = json.loads((out / "inference.json").read_text())  # the GPU's rows, at the tiny shapes on the CPU
    assert {(r["model"], r["runtime"]) for r in inference["rows"]} == {
        (m, r) for m in ("tiny-teacher", "tiny-student") for r in ("eager", "onnx")}
    assert "| tiny-student | onnx | 1 |" in summary
    run = json.loads(next((out / "glue" / "sst2").glob("lr*_seed42/results.json")).read_text())
    return summary, run["data"]


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_SST2 / "dev.tsv").is_file(), reason="GLUE's real SST-2 is not at ../shared/data/glue")
def test_the_gpu_check_runs_its_cpu_steps_on_the_real_sst2(tmp_path):
    out = tmp_path / "out"
    summary, data = check_complete_dry_run(dry_run(ROOT, out), out)
    assert "SST-2 for step 8: ../shared/data/glue/SST-2\n" in summary
    assert data == "GLUE TSV files in ../shared/data/glue/SST-2"


@pytest.mark.slow
def test_the_gpu_check_runs_its_cpu_steps_in_a_clone_without_shared_data(tmp_path):
    repo = clone(tmp_path / "repo")
    assert not (repo.parent / "shared").exists()
    out = tmp_path / "out"
    summary, data = check_complete_dry_run(dry_run(repo, out), out)
    assert f"SST-2 for step 8: {out}/data/glue/SST-2 (the generated stand-in)" in summary
    train = (out / "data" / "glue" / "SST-2" / "train.tsv").read_text().splitlines()[1:]
    dev = (out / "data" / "glue" / "SST-2" / "dev.tsv").read_text().splitlines()[1:]
    assert 4 <= len(train) / len(dev) <= 6  # 5 : 1, whatever the corpus size
    assert data == f"GLUE TSV files in {out}/data/glue/SST-2"


@pytest.mark.slow  # the packages, CUDA-test and env steps still run (~15 s)
def test_a_step_whose_input_failed_is_not_run_and_names_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data").write_text("a file where the data folder goes: the data step fails")
    proc = dry_run(ROOT, out)
    assert proc.returncode == 1
    rc = {s["step"]: s["rc"] for s in map(json.loads, (out / "steps.jsonl").read_text().splitlines())}
    assert rc["packages"] == rc["env"] == 0 and rc["data"] not in (0, 125)
    summary = (out / "summary.md").read_text()
    # each later step names the step it waits on; task distillation names the first missing one
    waits = {"binarize": "data", "token_counts": "binarize", "train_sh": "token_counts", "load": "train_sh",
             "glue": "train_sh", "task_distill": "train_sh", "qa_data": "data", "qa": "train_sh",
             "qa_distill": "qa"}
    for name, dep in waits.items():
        assert rc[name] == 125
        assert f"- {name}: FAILED, not run: step '{dep}' failed" in summary
        assert f"it needs the output of step '{dep}', which failed" in (out / f"{name}.log").read_text()
    assert "10 step(s) failed" in summary


def test_the_sst2_stand_in_refuses_too_few_lines_before_writing(tmp_path):
    with pytest.raises(SystemExit) as e:
        gpu_setup.main(["--out", str(tmp_path / "none"), "--articles", "0", "--small"])
    assert e.value.code == 2 and not (tmp_path / "none").exists()  # nothing written
