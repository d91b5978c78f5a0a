"""The README's first command, at a reduced size: every step runs, offline, and the files fit together."""

import json
import os
import subprocess
import sys

import pytest
from transformers import AutoModelForMaskedLM, BertTokenizerFast

from conftest import ROOT, positive
from scripts import demo_plan
from training.data_format import load_binarized, load_token_counts


def write_small_sst2(folder):
    """An SST-2 folder in GLUE's TSV form: short phrases whose label is their sentiment word."""
    folder.mkdir(parents=True)
    words = {1: ["good", "fine", "great", "warm"], 0: ["bad", "dull", "flat", "cold"]}
    rows = [(f"a {words[i % 2][i % 4]} film about the city", i % 2) for i in range(48)]
    for name, part in (("train.tsv", rows[:40]), ("dev.tsv", rows[40:])):
        (folder / name).write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in part))


@pytest.mark.slow
def test_demo_runs_the_whole_recipe(tmp_path, bf16_slow):  # fp32 without timing both (the timing: below)
    run = tmp_path / "demo_run"
    write_small_sst2(tmp_path / "glue" / "SST-2")
    env = dict(
        os.environ, PYTHON=sys.executable, DEMO_ARTICLES="300", DEMO_VALID="100", DEMO_TEACHER_EPOCHS="1",
        DEMO_STUDENT_EPOCHS="1", DEMO_ESTIMATE="0", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
        DEMO_GLUE_DIR=str(tmp_path / "glue"), DEMO_GLUE_TRAIN="32", DEMO_GLUE_SEEDS="1",
    )
    proc = subprocess.run(["bash", str(ROOT / "scripts/demo.sh"), str(run)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout

    # Steps 1-4: the data pipeline (the tokenizer is WordPiece unless bert-base-uncased is on disk).
    lines = (run / "dump.txt").read_text(encoding="utf-8").splitlines()
    assert lines and all(len(line.split()) >= 3 for line in lines)
    name = "wordpiece-uncased" if (run / "wordpiece-uncased").is_dir() else "bert-base-uncased"
    tokenizer = BertTokenizerFast.from_pretrained(run / "teacher")
    data = load_binarized(run / f"binarized_text.{name}.pickle")
    held_out = load_binarized(run / f"binarized_text.{name}.valid.pickle")
    counts, _ = load_token_counts(run / f"token_counts.{name}.pickle")
    assert data.meta["vocab_size"] == len(tokenizer) == len(counts)
    assert len(held_out) == 100 and len(data) + len(held_out) <= len(lines) and data.lengths.min() >= 12
    assert counts.sum() == data.n_tokens == data.token_ids.size

    # Steps 5-6: a teacher and three students with the same number of steps, each evaluated during training.
    teacher = AutoModelForMaskedLM.from_pretrained(run / "teacher")
    assert teacher.config.model_type == "bert" and teacher.config.num_hidden_layers == 4
    steps = {}
    for student in ("student_distilled", "student_mlm_only", "student_minilm"):
        model = AutoModelForMaskedLM.from_pretrained(run / student)
        assert model.config.model_type == "distilbert" and model.config.n_layers == 2
        records = [json.loads(x) for x in (run / student / "metrics.jsonl").read_text().splitlines()]
        assert any("valid_top1" in r for r in records)
        steps[student] = max(r["step"] for r in records)
    assert steps["student_distilled"] == steps["student_mlm_only"] == steps["student_minilm"] > 0
    params = json.loads((run / "student_distilled" / "parameters.json").read_text())
    assert params["alpha_ce"] > 0 and params["alpha_cos"] > 0 and params["alpha_mlm"] > 0
    assert json.loads((run / "student_mlm_only" / "parameters.json").read_text())["teacher_name"] == "none"
    # The precision the demo measured faster here is the one every training ran in.
    said = next(line for line in proc.stderr.splitlines() if line.startswith("demo: precision: "))
    assert params["bf16"] == said.endswith(": bf16") and params["precision"]["used"] == said.split()[-1]
    minilm = [json.loads(x) for x in (run / "student_minilm" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["att"] > 0 and r["vv"] > 0 and "mlm" not in r and "ce" not in r for r in minilm if "loss" in r)

    # Step 7: the table, the JSON, the plot, the fill-mask lines and the verdict.
    ev = json.loads((run / "evaluation.json").read_text())
    assert set(ev["models"]) == {"teacher", "distilled", "mlm_only", "minilm"} and ev["teacher"] == "teacher"
    assert {"agreement", "kl"} <= set(ev["models"]["distilled"])
    assert "teacher (teacher)" in out and "agree w/ teacher" in out
    assert (run / "students.png").stat().st_size > 10_000
    assert out.count("(answer: ") == 4
    assert "the distilled student" in out and "the undistilled one on held-out top-1" in out
    assert "the MiniLM student" in out

    # Step 8 (DEMO_GLUE_DIR): the four models fine-tuned on SST-2, and their table beside the published rows.
    for model in ("teacher", "student_distilled", "student_mlm_only", "student_minilm"):
        results = json.loads((run / "glue" / model / "results.json").read_text())
        assert results["tasks"]["sst2"]["seeds"] == [42] and len(results["tasks"]["sst2"]["runs"]) == 1
    table = (run / "glue.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[2:6]] == ["| teacher", "| student_distilled", "| student_mlm_only",
                                                             "| student_minilm"]
    assert any(line.startswith("| DistilBERT 6L, dev (published") for line in table)

    # The time each stage took, at the end.
    after = out.partition("time per stage on this CPU:")[2]
    assert [line.split()[0] for line in after.strip().splitlines()[:8]] == [
        "data:", "teacher", "student", "distilled", "MLM-only", "MiniLM", "evaluation,", "SST-2"
    ]


def test_demo_configs_are_the_models_the_plan_times(tmp_path):
    from transformers import BertConfig, DistilBertConfig

    demo_plan.write_configs(tmp_path, 1234)
    t = BertConfig.from_json_file(str(tmp_path / "teacher_config.json"))
    s = DistilBertConfig.from_json_file(str(tmp_path / "student_config.json"))
    assert (t.num_hidden_layers, t.hidden_size, t.vocab_size) == (4, 256, 1234)
    assert (s.n_layers, s.dim, s.vocab_size, s.sinusoidal_pos_embds) == (2, 256, 1234, False)


def test_the_plan_times_real_steps(capsys):
    t = demo_plan.time_steps(n_steps=1)
    assert set(t) == {"teacher", "distilled", "mlm_only", "minilm", "eval_per_seq"}
    assert all(positive(s) for s in t.values())  # the one check of a timing: positive and finite
    demo_plan.estimate(articles=300, teacher_epochs=1, student_epochs=1, valid=100, t=t)
    assert "measured per step: teacher" in capsys.readouterr().out


def test_the_plan_scales_the_step_times_by_the_demo_sizes(capsys):
    t = {"teacher": 0.5, "distilled": 0.7, "mlm_only": 0.3, "minilm": 0.6, "eval_per_seq": 0.01}  # seconds, given
    total = demo_plan.estimate(articles=300, teacher_epochs=1, student_epochs=1, valid=100, t=t)
    out = capsys.readouterr().out
    assert "measured per step: teacher" in out and out.splitlines()[-1].split()[-1] == f"~{demo_plan.fmt(total)}"
    one, ten = (dict((name, (work, s)) for name, work, s in demo_plan.plan(300, e, 1, 100, t)) for e in (1, 10))
    teacher = "teacher (4 x 256 BERT, plain MLM)"
    assert one[teacher][0] == "16 steps" and ten[teacher][0] == "160 steps"  # ceil((2.0 x 300 - 100) / 32) an epoch
    steps_time = lambda stages: stages[teacher][1] - demo_plan.PROCESS_START  # noqa: E731
    evals = 100 * t["eval_per_seq"]
    assert steps_time(ten) == pytest.approx(160 * t["teacher"] + evals)
    assert steps_time(one) == pytest.approx(16 * t["teacher"] + evals)


def test_the_demo_sizes_live_in_one_table_and_bad_overrides_stop_it_first(tmp_path, monkeypatch):
    assert demo_plan.sizes({}) == demo_plan.SIZES
    assert demo_plan.sizes({"DEMO_VALID": "100", "DEMO_GLUE_SEEDS": "1"}) == {**demo_plan.SIZES, "valid": 100,
                                                                              "glue_seeds": 1}
    # demo.sh reads them through `demo_plan.py sizes`: the names it evals, with an override applied
    env = dict(os.environ, PYTHON=sys.executable, DEMO_TEACHER_EVAL_EVERY="7")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_plan.py"), "sizes"], env=env,
                         capture_output=True, text=True, check=True).stdout
    expected = {**demo_plan.SIZES, "teacher_eval_every": 7}
    assert out.splitlines() == [f"{k.upper()}={v}" for k, v in expected.items()]
    for bad in ("0", "x", "-3", "1.5", ""):
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), str(tmp_path / "run")],
                              env=dict(env, DEMO_ARTICLES=bad), capture_output=True, text=True)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert proc.stderr.strip() == f"demo_plan.py: error: DEMO_ARTICLES={bad!r}: give a positive whole number"
        assert not (tmp_path / "run").exists()


def test_the_demo_trains_in_bf16_only_where_it_measures_faster(tmp_path, cpu_bf16):
    assert demo_plan.precision_flags({"fp32": 1.0, "bf16": 0.5})[0] == "--bf16"
    assert demo_plan.precision_flags({"fp32": 1.0, "bf16": 0.95}) == (
        "", "a distillation step took 950 ms in bf16, 1000 ms in fp32 (0.95x): fp32")
    choice, why = demo_plan.precision_flags()  # a fast CPU: both steps timed here; a slow one: fp32 untimed
    if cpu_bf16:
        assert choice in ("", "--bf16") and why.startswith("a distillation step took ")
        assert why.endswith("bf16" if choice else "fp32")
    else:
        assert (choice, why) == ("", "this CPU has no fast bf16: fp32")
    env = dict(os.environ, PYTHON=sys.executable, DEMO_PRECISION="fp8")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), str(tmp_path / "run")], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "DEMO_PRECISION=fp8: give auto, fp32 or bf16" in proc.stderr
    assert not (tmp_path / "run").exists()
