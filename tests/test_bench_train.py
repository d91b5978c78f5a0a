"""benchmarks/bench_train.py: its FLOP count is the matmul work both steps really do, and it runs end to end."""

import json

import numpy as np
import pytest
import torch
from torch.utils import flop_counter

from benchmarks import bench_train, workload
from benchmarks.upstream_step import Reference
from conftest import run_script


def _addmm_inplace_flops(_self, a, b, *args, out_shape=None, **kwargs):
    """FlopCounterMode knows addmm but not the in-place addmm_ (FusedKD's weight-gradient accumulation)."""
    return 2 * a[0] * a[1] * b[1]


@pytest.mark.parametrize("impl", ["ours", "ref"])
def test_model_flops_equal_the_matmuls_a_step_runs(impl):
    """Counted on a real step (eager attention, so QK^T and AV are visible bmm; no padding): the same FLOPs
    as model_flops(). For our step this also pins that no row is projected to the vocabulary twice."""
    torch.manual_seed(0)
    student, teacher = workload.build_models("tiny")
    for model in (student, teacher):
        model.set_attn_implementation("eager")
    rng = np.random.default_rng(0)
    seqs = [np.concatenate(([101], rng.integers(999, workload.VOCAB, 38), [102])) for _ in range(4)]
    if impl == "ours":
        runner = bench_train.Ours(student, teacher)
    else:
        runner = Reference(student, teacher, workload.token_probs())
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_inplace_flops})
    with counter:
        runner.train_step(seqs)
    assert counter.get_total_flops() == workload.model_flops([40] * 4, "tiny")


def test_model_flops_by_hand():
    # one 10-token sequence; tiny teacher 4 x 128 (FFN 512), student 2 x 128, vocab 30,522
    def forward(layers, d, ffn, n=10):
        return 2 * (layers * ((4 * d * d + 2 * d * ffn) * n + 2 * d * n * n) + (d * d + d * 30522) * n)

    assert workload.model_flops([10], "tiny") == forward(4, 128, 512) + 3 * forward(2, 128, 512)


def test_peak_table_picks_the_card_variant():
    assert workload.peak_tflops_for("NVIDIA H100 PCIe") == 756.0
    assert workload.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.4
    assert workload.peak_tflops_for("NVIDIA GeForce RTX 4090") == 165.2
    assert workload.peak_tflops_for("Some Future GPU") is None


@pytest.mark.slow
def test_benchmark_runs_from_the_command_line_and_prints_the_ratios(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_script(
        "benchmarks/bench_train.py",
        *("--sizes", "tiny", "--steps", "1", "--warmup", "0", "--rounds", "1", "--impls", "ref,ours"),
        *("--json", out),
        check=True,
    )
    assert "tiny: losses agree (fp32" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| tiny |")]
    assert [r.split("|")[2].strip() for r in rows] == ["ref", "ours"]
    assert rows[0].split("|")[6].strip() == "1.00x"
    results = json.loads(out.read_text())
    assert {r["impl"] for r in results} == {"ref", "ours"}
    for r in results:
        assert r["tokens"] > 0 and r["model_tflop_per_s"] > 0 and r["peak_rss_gib"] > 0
    ours = next(r for r in results if r["impl"] == "ours")
    ratio = float(rows[1].split("|")[6].strip().rstrip("x"))
    ref = next(r for r in results if r["impl"] == "ref")
    assert ratio == pytest.approx(ours["tokens_per_s"] / ref["tokens_per_s"], abs=0.006)


def test_the_ablations_turn_off_only_their_fast_path_and_train_the_same():
    """bench_train.py's ablations live in the benchmark, not on the Distiller: each turns off its fast path (and
    nothing else), and a step through it gives the losses and weights of the fast one."""
    results = {}
    for name, ablation in (("fast", {}), ("unfused", {"fused_kd": False}), ("adamw-loop", {"fused_adamw": False})):
        student, teacher = bench_train.build_models("tiny")
        student.eval()  # no dropout: the three steps see one network
        torch.manual_seed(0)
        d, dataset = bench_train.make_distiller(student, teacher, **ablation)
        assert d.plan.fused_kd == (name != "unfused") and d.optimizer.defaults["fused"] == (name != "adamw-loop")
        seqs = bench_train.make_batches("tiny", 1, seed=1)[0]
        torch.manual_seed(1)
        losses = d.train_step(d.prepare_batch(*dataset.batch_sequences([(s, len(s)) for s in seqs])))
        results[name] = losses["loss"].item(), [p.detach().clone() for p in d.student_model.parameters()]
    for name in ("unfused", "adamw-loop"):
        assert results[name][0] == pytest.approx(results["fast"][0], rel=1e-5)
        for got, want in zip(results[name][1], results["fast"][1]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
