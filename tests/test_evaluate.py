"""MLM evaluation: scripts/evaluate.py and train.py's --valid_file, on tiny models built offline."""

import argparse
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard
from transformers import BertTokenizer, DistilBertForMaskedLM

import train
from conftest import input_error
from scripts import (
    evaluate,
    fill_mask,  # the same model shown: its guesses would be random
    make_synthetic_wiki,
)
from train_helpers import make_headless_teacher_dir, read_metrics, tiny_run_files, tiny_student_config, write_data
from training import data_format, evaluation


@pytest.fixture(scope="module")
def files(tmp_path_factory, tokenizer_dir, articles):
    """Training files and a tiny teacher (tiny_run_files), a held-out file from other articles, and a tiny
    randomly initialised student saved like a train.py run folder."""
    folder = tmp_path_factory.mktemp("eval_files")
    argv = tiny_run_files(folder, tokenizer_dir, articles)
    held_out = list(make_synthetic_wiki.generate(40, seed=1))
    valid, _ = write_data(folder / "valid", tokenizer_dir, held_out)
    tok = BertTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(1)
    student = folder / "student"
    DistilBertForMaskedLM(tiny_student_config(len(tok))).save_pretrained(student)
    tok.save_pretrained(student)
    teacher = argv[argv.index("--teacher_name") + 1]
    counts = argv[argv.index("--token_counts") + 1]
    return {"argv": argv, "teacher": teacher, "student": str(student), "valid": str(valid), "counts": counts}


def run_evaluate(files, tmp_path, *models, teacher=None):
    argv = ["--data_file", files["valid"], "--token_counts", files["counts"], "--n_gpu", "0"]
    argv += ["--output", str(tmp_path / "eval.json")]
    argv += ["--teacher", teacher] if teacher else []
    for m in models:
        argv += ["--model", m]
    return evaluate.main(argv)


def masked(files, model_dir):
    """The masked batches scripts/evaluate.py scores `model_dir` on."""
    from transformers import AutoModelForMaskedLM

    args = argparse.Namespace(
        data_file=files["valid"], token_counts=files["counts"], mlm_mask_prop=0.15, word_mask=0.8, word_keep=0.1,
        word_rand=0.1, mlm_smoothing=0.7, batch_size=evaluation.EVAL_BATCH_SIZE,
    )
    tok = BertTokenizer.from_pretrained(model_dir)
    model = AutoModelForMaskedLM.from_pretrained(model_dir)
    mask, dataset = evaluate.held_out(args, tok, data_format.load_binarized(files["valid"]), model, torch.device("cpu"))
    return evaluation.masked_batches(mask, dataset), model


def test_same_figures_twice_and_the_same_masked_positions_for_every_model(files, tmp_path):
    first = run_evaluate(files, tmp_path, files["student"], teacher=files["teacher"])
    second = run_evaluate(files, tmp_path, files["student"], teacher=files["teacher"])
    assert first == second
    assert set(first) == {"tiny-bert", "student"}
    assert {"loss", "perplexity", "top1", "top5", "masked_tokens"} <= set(first["tiny-bert"])
    assert {"agreement", "kl"} <= set(first["student"]) and "agreement" not in first["tiny-bert"]
    assert 0 <= first["student"]["top1"] <= first["student"]["top5"] <= 1
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["models"]["student"]["top1"] == first["student"]["top1"] and saved["teacher"] == "tiny-bert"

    rng = torch.get_rng_state()
    (t_batches, _), (s_batches, _) = masked(files, files["teacher"]), masked(files, files["student"])
    assert torch.equal(rng, torch.get_rng_state())  # masking under a fixed seed leaves the global RNG alone
    assert len(t_batches) == len(s_batches) > 1
    for a, b in zip(t_batches, s_batches):
        for field in ("input_ids", "attention_mask", "rows", "targets"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
    n_masked = sum(len(b.targets) for b in t_batches)
    assert n_masked == first["student"]["masked_tokens"]
    assert (t_batches[0].input_ids == 4).any()  # [MASK] (id 4) put in, as in training


def test_a_model_against_itself_agrees_fully_with_zero_kl(files, tmp_path):
    r = run_evaluate(files, tmp_path, f"copy={files['student']}", teacher=f"orig={files['student']}")
    assert r["copy"]["agreement"] == 1.0
    assert abs(r["copy"]["kl"]) < 1e-6
    assert r["copy"]["loss"] == r["orig"]["loss"] and r["copy"]["top1"] == r["orig"]["top1"]


def test_figures_equal_a_direct_computation(files, tmp_path):
    batches, model = masked(files, files["student"])
    ce, top1, top5, n = 0.0, 0, 0, 0
    with torch.no_grad():
        for b in batches:  # the whole model on the whole batch, then the masked positions picked out
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.flatten(0, 1)
            picked = logits[b.rows[: b.n_targets]]
            ce += F.cross_entropy(picked, b.targets, reduction="sum").item()
            ranked = picked.argsort(dim=-1, descending=True)
            top1 += (ranked[:, 0] == b.targets).sum().item()
            top5 += (ranked[:, :5] == b.targets[:, None]).any(1).sum().item()
            n += len(b.targets)
    r = run_evaluate(files, tmp_path, files["student"])["student"]
    assert r["loss"] == pytest.approx(ce / n, rel=1e-5)
    assert r["perplexity"] == pytest.approx(torch.tensor(ce / n).exp().item(), rel=1e-5)
    assert (r["top1"], r["top5"]) == (top1 / n, top5 / n)


def test_train_evaluates_on_the_held_out_file_without_changing_the_training(files, tmp_path):
    argv = [*files["argv"], "--n_epoch", "1", "--log_interval", "5", "--learning_rate", "1e-3"]
    train.main([*argv, "--dump_path", str(tmp_path / "plain")])
    with_eval = [*argv, "--dump_path", str(tmp_path / "eval"), "--valid_file", files["valid"], "--eval_interval", "20"]
    train.main(with_eval)

    lines = [json.loads(x) for x in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if "valid_top1" in r]
    assert [r["iter"] for r in evals] == [20, 40, 45]  # every 20 batches and at the end (45 batches)
    assert evals[-1]["valid_loss"] < evals[0]["valid_loss"]
    plain = read_metrics(tmp_path / "plain")
    trained = {r["iter"]: r for r in lines if "loss" in r}
    assert sorted(plain) == sorted(trained)
    for it in plain:  # the evaluations draw their masks from a forked RNG: training is untouched
        assert trained[it]["loss"] == plain[it]["loss"], it

    # The last in-training evaluation is scripts/evaluate.py's figure for the final student.
    final = run_evaluate(files, tmp_path, str(tmp_path / "eval"))["eval"]
    assert final["loss"] == pytest.approx(evals[-1]["valid_loss"], rel=1e-5)
    assert final["top1"] == evals[-1]["valid_top1"] and final["masked_tokens"] == evals[-1]["valid_masked_tokens"]
    assert "eval iter 45" in (tmp_path / "eval" / "train.log").read_text()
    # The model card beside the student holds the last evaluation, and names the teacher (the hub parses it).
    card = ModelCard.load(tmp_path / "eval" / "README.md").data.to_dict()
    metrics = {m["type"]: m["value"] for m in card["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"masked-token top1": evals[-1]["valid_top1"], "masked-token top5": evals[-1]["valid_top5"]}
    assert card["pipeline_tag"] == "fill-mask" and card["teacher"] == files["argv"][files["argv"].index(
        "--teacher_name") + 1]
    assert "model-index" not in ModelCard.load(tmp_path / "plain" / "README.md").data.to_dict()  # nothing measured


def test_bad_input_is_one_line_error(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train.main([*files["argv"], "--dump_path", str(tmp_path / "run"), "--valid_file", str(tmp_path / "no.pickle")])
    assert e.value.code == 2 and "binarize with --valid_size" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as e:
        run_evaluate(files, tmp_path, str(tmp_path / "missing_model"))
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and line.startswith("evaluate.py: error: ") and "missing_model does not exist" in line


def test_a_model_without_mlm_head_is_refused_not_scored(files, tmp_path, tokenizer_dir, capsys):
    """An encoder-only checkpoint loads with a random head: its ~0% top-1 would read as a real figure."""
    headless = make_headless_teacher_dir(tmp_path / "encoder", tokenizer_dir)[0]
    base = ["--data_file", files["valid"], "--token_counts", files["counts"], "--n_gpu", "0"]
    base += ["--output", str(tmp_path / "eval.json")]
    for models in (["--model", headless], ["--teacher", f"enc={headless}", "--model", files["student"]]):
        line = input_error(evaluate.main, base + models)
        assert "has no masked-LM head (its checkpoint lacks cls.predictions.bias" in line, line
        assert "so its predictions would be random: leave it out" in line
        assert not (tmp_path / "eval.json").exists()
    assert "model enc (" in line

    line = input_error(fill_mask.main, ["--model", headless, "--text", "the [MASK] river ."])
    assert "model encoder (" in line and "has no masked-LM head" in line


def test_max_sequences_scores_the_first_sequences_of_the_file(files, tmp_path):
    data = data_format.load_binarized(files["valid"])
    first = [data[i] for i in range(10)]
    cut = tmp_path / "first10.pickle"
    offsets = data_format.offsets_from_lengths(list(map(len, first)))
    data_format.save_binarized(cut, np.concatenate(first), offsets, data.meta)
    base = ["--token_counts", files["counts"], "--n_gpu", "0", "--model", files["student"]]
    whole = evaluate.main(["--data_file", str(cut), *base, "--output", str(tmp_path / "a.json")])
    head = evaluate.main(["--data_file", files["valid"], "--max_sequences", "10", *base,
                          "--output", str(tmp_path / "b.json")])
    assert whole == head and whole["student"]["masked_tokens"] > 0


@pytest.mark.parametrize("flags, expected", [
    (["--word_mask", "0.5"], "--word_mask + --word_keep + --word_rand must sum to 1"),
    (["--mlm_mask_prop", "1.5"], "--mlm_mask_prop must be in [0, 1], got 1.5"),
])
def test_masking_flags_are_checked_as_train_py_checks_them(tmp_path, flags, expected):
    """One set of masking flags (masking.add_flags) with train.py's checks: evaluating with rates no training
    could have used is refused before any model loads."""
    argv = ["--model", str(tmp_path / "m"), "--data_file", str(tmp_path / "d"), "--token_counts", str(tmp_path / "c")]
    assert expected in input_error(evaluate.main, [*argv, *flags])
