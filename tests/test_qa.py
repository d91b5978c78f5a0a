"""Issue 33: question answering with distillation (qa.py, qa_distill.py, scripts/run_qa.py, scripts/make_qa_data.py).

Windows, labels and post-processing on hand-worked examples; SQuAD's official EM/F1 against hand computations;
both JSON forms and the real SQuAD v1.1 sample that allennlp 0.9.0's wheel ships; every bad input and flag in
one line; the distillation losses against a per-window numpy computation; the teacher's cached logits against
the teacher run window by window; and tiny models end to end (a QA teacher saved, then distilled into a
student; v1.1 and v2.0; kept runs; the saved model reproducing its own predictions)."""

import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    BertConfig,
    BertForQuestionAnswering,
    BertTokenizer,
)

from conftest import ROOT, input_error, run_main, write_bert_vocab
from scripts import make_qa_data, run_qa
from tasks import qa, qa_distill
from test_glue import FAST
from train_helpers import make_teacher_dir

CONTEXT = "a b c d e f g h i j"  # one token per letter; letter k starts at character 2k


@pytest.fixture(scope="module")
def letters(tmp_path_factory):
    """A fast WordPiece tokenizer whose words are single letters and 'what'."""
    folder = write_bert_vocab(tmp_path_factory.mktemp("letters") / "tok", ["what"])
    return BertTokenizer.from_pretrained(str(folder))


def example(answers, qid="q", question="what", context=CONTEXT):
    return qa.Example(qid, question, context, answers)


# ----------------------------------------------------------------------------------------------------------
# Windows and their labels, by hand


def test_windows_overlap_by_doc_stride_and_label_the_answer_where_it_is_whole(letters):
    # 8 tokens: [CLS] what [SEP] + 4 context tokens + [SEP]; overlap 2 -> windows a-d, c-f, e-h, g-j
    exs = [example([("d e", 6)], "across"), example([("e", 8)], "twice")]
    f = qa.features(letters, exs, max_seq_length=8, doc_stride=2, max_query_length=4, training=True)
    windows = [letters.decode(ids[3:7]) for ids in f["input_ids"]]
    assert windows == ["a b c d", "c d e f", "e f g h", "g h i j"] * 2
    assert f["example"] == [0] * 4 + [1] * 4
    assert f["cls_index"] == [0] * 8
    # "d e" is whole only in window c-f (tokens 4, 5); a window holding part of it points at [CLS]
    assert list(zip(f["start_positions"], f["end_positions"]))[:4] == [(0, 0), (4, 5), (0, 0), (0, 0)]
    # "e" is in two windows: c-f at token 5, e-h at token 3
    assert list(zip(f["start_positions"], f["end_positions"]))[4:] == [(0, 0), (5, 5), (3, 3), (0, 0)]


def test_evaluation_windows_carry_character_spans_of_the_context_only(letters):
    f = qa.features(letters, [example([("d e", 6)])], 8, 2, 4, training=False)
    assert "start_positions" not in f
    assert f["offsets"][1] == [None, None, None, (4, 5), (6, 7), (8, 9), (10, 11), None]


def test_long_questions_are_cut_to_max_query_length(letters):
    long = example([("e", 8)], question="what what what what what")
    f = qa.features(letters, [long], 8, 2, max_query_length=1, training=True)
    assert letters.decode(f["input_ids"][0]) == "[CLS] what [SEP] a b c d [SEP]"
    assert qa.cut_questions(letters, [" what  what what"], 2) == [" what  what"]


def test_an_unanswerable_question_points_at_cls_in_every_window(letters):
    f = qa.features(letters, [example([])], 8, 2, 4, training=True)
    assert f["start_positions"] == f["end_positions"] == [0, 0, 0, 0]


# ----------------------------------------------------------------------------------------------------------
# From logits back to answers, by hand


def one_window(letters, ex, seq=16):
    f = qa.features(letters, [ex], seq, 2, 4, training=False)
    assert len(f["example"]) == 1 and f["offsets"][0][3] == (0, 1)  # [CLS] what [SEP] a..j [SEP]: a at 3
    return f


def logits(**at):
    v = np.full(14, -10.0, dtype=np.float32)  # a low floor: only the positions named are candidates
    for k, x in at.items():
        v[int(k[1:])] = x
    return v


# start: the question token 1 is highest (never a start), then f (8), then a (3); end: j (12), then d (6),
# then g (9). Of three tokens at most, (8, 9) "f g" scores 9; (8, 6) would end before it starts.
START, END = logits(p1=10, p8=5, p3=4.5), logits(p12=10, p6=9, p9=4)


def test_the_best_span_starts_in_the_context_ends_after_it_starts_and_is_short_enough(letters):
    ex = example([("f g", 10)])
    f = one_window(letters, ex)
    preds, nbest, _ = qa.postprocess([ex], f, [START], [END], n_best_size=20, max_answer_length=3)
    assert preds == {"q": "f g"}
    top = nbest["q"][0]
    assert (top["text"], top["score"], top["start_logit"], top["end_logit"]) == ("f g", 9.0, 5.0, 4.0)
    assert sum(c["probability"] for c in nbest["q"]) == pytest.approx(1.0)
    assert [c["score"] for c in nbest["q"]] == sorted((c["score"] for c in nbest["q"]), reverse=True)
    # (3, 6) "a b c d": 4.5 + 9, four tokens; (8, 12) "f g h i j": 5 + 10, five
    for longest, text in ((4, "a b c d"), (5, "f g h i j"), (10, "f g h i j")):
        got, _, _ = qa.postprocess([ex], f, [START], [END], n_best_size=20, max_answer_length=longest)
        assert got == {"q": text}, longest


def test_n_best_size_limits_the_starts_and_ends_considered(letters):
    ex = example([("f g", 10)])
    f = one_window(letters, ex)
    # two starts (1: question, 8) and two ends (12, 6): only (8, 12), 5 tokens, can be an answer
    preds, nbest, _ = qa.postprocess([ex], f, [START], [END], n_best_size=2, max_answer_length=5)
    assert preds == {"q": "f g h i j"} and len(nbest["q"]) == 1
    none, _, _ = qa.postprocess([ex], f, [START], [END], n_best_size=2, max_answer_length=3)
    assert none == {"q": ""}  # no valid span


def test_v2_answers_nothing_when_the_null_score_beats_the_best_span_by_more_than_the_threshold(letters):
    ex = example([])
    f = one_window(letters, ex)
    start, end = START.copy(), END.copy()
    start[0], end[0] = 5, 5  # null 10 against "f g"'s 9
    preds, nbest, odds = qa.postprocess([ex], f, [start], [end], 20, 3, version_2=True)
    assert preds == {"q": ""} and odds == {"q": pytest.approx(1.0)}
    assert nbest["q"][0]["text"] == "" and nbest["q"][0]["score"] == 10.0
    preds, _, _ = qa.postprocess([ex], f, [start], [end], 20, 3, version_2=True, null_threshold=1.5)
    assert preds == {"q": "f g"}


def test_v2_null_score_is_the_lowest_over_a_questions_windows(letters):
    ex = example([])
    f = qa.features(letters, [ex], 8, 2, 4, training=False)  # four windows; context tokens at 3-6
    starts = [np.array([c, 0, 0, 4, 0, 0, 0, 0.0]) for c in (9, 3, 8, 7)]  # best span: 4 (start 4 + end 0)
    ends = [np.array([c, 0, 0, 0, 0, 0, 0, 0.0]) for c in (9, 3, 8, 7)]
    _, _, odds = qa.postprocess([ex], f, starts, ends, 20, 30, version_2=True)
    assert odds["q"] == pytest.approx(6 - 4)  # window 2's null, 3 + 3, not window 1's 18


# ----------------------------------------------------------------------------------------------------------
# SQuAD's metrics, by hand


def test_exact_match_and_f1_follow_the_official_normalisation():
    assert qa.normalize_answer("The  Cat, sat!") == "cat sat"
    assert qa.exact("An apple.", "apple") == 1.0 and qa.exact("apples", "apple") == 0.0
    # "cat sat on" against "cat sat": 2 shared tokens, precision 2/3, recall 1 -> F1 0.8
    assert qa.f1("the cat sat on", "a cat sat") == pytest.approx(0.8)
    assert qa.f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # shared tokens counted with multiplicity
    assert qa.f1("dog", "cat") == 0.0
    assert qa.f1("", "") == 1.0 and qa.f1("the", "") == 1.0 and qa.f1("", "cat") == 0.0


def test_squad_v1_metrics_take_the_best_gold_answer_and_count_missing_predictions_as_wrong():
    exs = [example([("Denver Broncos", 0), ("Broncos", 7)], "q1"), example([("cat sat", 0)], "q2"),
           example([("x", 0)], "q3")]  # fmt: skip
    m = qa.squad_metrics(exs, {"q1": "the Broncos", "q2": "the cat sat on"})
    assert m == {"exact_match": pytest.approx(1 / 3), "f1": pytest.approx((1 + 0.8 + 0) / 3)}


def test_squad_v2_metrics_split_answerable_and_unanswerable_questions():
    exs = [example([("cat sat", 0)], "has1"), example([("dog", 0)], "has2"), example([], "no1"),
           example([], "no2")]  # fmt: skip
    m = qa.squad_metrics(exs, {"has1": "cat sat on", "has2": "", "no1": "", "no2": "dog"}, version_2=True)
    assert m == pytest.approx({"exact": 1 / 4, "f1": (0.8 + 0 + 1 + 0) / 4, "HasAns_exact": 0.0,
                               "HasAns_f1": 0.4, "NoAns_exact": 0.5, "NoAns_f1": 0.5})  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Data: both JSON forms, the real SQuAD sample, a generated set


@pytest.fixture(scope="module")
def syn_qa(tmp_path_factory, articles):
    """make_qa_data.py's cloze sets (v1.1 and v2.0, one paragraph per context) from the synthetic articles."""
    folder = tmp_path_factory.mktemp("qa_data")
    src = folder / "articles.jsonl"
    src.write_text("".join(json.dumps(a) + "\n" for a in articles), encoding="utf-8")
    for flags, out in (((), "v1"), (("--version_2",), "v2")):
        run_main(make_qa_data.main, "--source", src, "--output_dir", folder / out, "--paragraphs", 1, *flags,
                 check=True)  # fmt: skip
    return folder


def test_the_nested_and_the_flat_forms_read_as_the_same_questions(syn_qa):
    for version, split in (("v1", "train-v1.1.json"), ("v2", "dev-v2.0.json")):
        nested = qa.load_split(str(syn_qa / version / split), "x", version == "v2", False)
        flat = qa.load_split(str(syn_qa / version / f"{split.split('-')[0]}.flat.json"), "x", version == "v2", False)
        assert len(nested) > 100 and nested.examples == flat.examples and nested.digest == flat.digest
        records = json.loads((syn_qa / version / f"{split.split('-')[0]}.flat.json").read_text())["data"]
        lines = syn_qa / version / "lines.jsonl"  # JSON lines of flat records, and answers as a list of objects
        lines.write_text("".join(json.dumps({**r, "answers": [{"text": t, "answer_start": s} for t, s in zip(
            r["answers"]["text"], r["answers"]["answer_start"])]}) + "\n" for r in records))  # fmt: skip
        assert qa.load_split(str(lines), "x", version == "v2", False).examples == nested.examples
    v2 = qa.load_split(str(syn_qa / "v2" / "train-v2.0.json"), "train", True, True)
    assert 0.2 < sum(not e.answers for e in v2.examples) / len(v2) < 0.45  # about a third asked elsewhere


def test_generated_questions_are_their_context_sentence_with_the_answer_replaced(syn_qa):
    for e in qa.load_split(str(syn_qa / "v1" / "dev-v1.1.json"), "dev", False, False).examples:
        ((text, start),) = e.answers
        after = e.context[start + len(text) :]
        cuts = [i for i in range(len(e.question)) if e.question.startswith("what", i)]  # which "what" is the blank
        assert any(e.context[start - i : start] == e.question[:i] and after.startswith(e.question[i + 4 : -1])
                   for i in cuts), e  # fmt: skip


def test_make_qa_data_refuses_bad_sources_and_flags_and_writes_nothing(tmp_path):
    (tmp_path / "plain.txt").write_text("no names or numbers here at all, only words\n" * 20)
    (tmp_path / "empty_rte").mkdir()
    for argv, words in (((tmp_path / "missing.jsonl",), "no such file"),
                        ((tmp_path / "empty_rte",), "holds no train-"),
                        ((tmp_path / "plain.txt",), "gave no questions"),
                        ((tmp_path / "plain.txt", "--paragraphs", 0), "--paragraphs 0"),
                        ((tmp_path / "plain.txt", "--max_train_questions", 0), "--max_train_questions 0")):  # fmt: skip
        line = input_error(make_qa_data.main, ["--source", *argv, "--output_dir", tmp_path / "out"])
        assert words in line, line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


SQUAD_FIXTURE = "allennlp/tests/fixtures/data/squad.json"


@pytest.fixture(scope="module")
def real_squad(tmp_path_factory):
    """The 5 real SQuAD v1.1 questions (Notre Dame) that allennlp 0.9.0's wheel ships as a test fixture."""
    folder = tmp_path_factory.mktemp("allennlp")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "allennlp==0.9.0", "-d", str(folder)]
    try:
        subprocess.run(cmd, capture_output=True, timeout=180, check=True)
        wheel = next(folder.glob("allennlp-0.9.0-*.whl"))
    except (subprocess.SubprocessError, OSError, StopIteration) as e:
        pytest.skip(f"allennlp 0.9.0's wheel (the real SQuAD sample) cannot be fetched here: {e!r:.120}")
    with zipfile.ZipFile(wheel) as z:
        path = folder / "squad.json"
        path.write_bytes(z.read(SQUAD_FIXTURE))
    return path


def test_the_real_squad_sample_reads_and_scores_itself_perfectly(real_squad, letters):
    data = qa.load_split(str(real_squad), "dev", False, False)
    assert len(data) == 5 and all(e.answers for e in data.examples)
    assert data.examples[0].title == "University_of_Notre_Dame" and "Lourdes" in data.examples[0].question
    gold = {e.id: e.answers[0][0] for e in data.examples}
    assert qa.squad_metrics(data.examples, gold) == {"exact_match": 1.0, "f1": 1.0}
    f = qa.features(letters, data.examples, 256, 64, 32, training=True)  # each question: a window with its answer
    assert {f["example"][i] for i in range(len(f["example"])) if f["start_positions"][i] != 0} == set(range(5))


# ----------------------------------------------------------------------------------------------------------
# Bad input: one line, status 2, before any training


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer_dir):
    """A tiny BERT (masked-LM, 64 positions) with the synthetic corpus's tokenizer."""
    folder, _, _ = make_teacher_dir(tmp_path_factory.mktemp("qa_tiny") / "tiny-bert", tokenizer_dir)
    return folder


def write(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def nested(qas, context="Riverburg was founded in 1477."):
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


GOOD = {"id": "1", "question": "Riverburg was founded in what?", "answers": [{"text": "1477", "answer_start": 25}]}


@pytest.mark.parametrize("case, obj, words", [
    ("missing question", nested([{"id": "1", "answers": []}]), "has no 'question'"),
    ("moved answer", nested([{**GOOD, "answers": [{"text": "1477", "answer_start": 3}]}]),
     "is not at answer_start 3"),
    ("empty context", nested([GOOD], context="  "), "has an empty context"),
    ("twice", nested([GOOD, GOOD]), "appears twice"),
    ("no answer in v1.1", nested([GOOD, {**GOOD, "id": "2", "answers": []}]), "needs --version_2_with_negative"),
    ("answer start not a number", nested([{**GOOD, "answers": [{"text": "1477", "answer_start": "25"}]}]),
     "integer 'answer_start'"),
    ("flat without answers", {"data": [{"id": "1", "question": "q", "context": "c"}]}, "has no 'answers'"),
    ("flat answers of two lengths", [{**GOOD, "context": "c", "answers": {"text": ["a"], "answer_start": []}}],
     "of one length"),
    ("no questions", {"data": []}, "holds no questions"),
])  # fmt: skip
def test_bad_data_is_refused_in_one_line_before_training(tmp_path, tiny, case, obj, words):
    good = write(tmp_path / "good.json", nested([GOOD]))
    bad = write(tmp_path / "bad.json", obj)
    for train, dev in ((bad, good), (good, bad)):
        line = input_error(run_qa.main, ["--model_name_or_path", tiny, "--train_file", train, "--validation_file",
                                         dev, "--output_dir", tmp_path / "out", "--max_seq_length", 64,
                                         "--max_query_length", 16, "--doc_stride", 16, *FAST])  # fmt: skip
        assert words in line, (case, line)
    assert not (tmp_path / "out" / "results.json").exists() and not (tmp_path / "out" / "squad").exists()


def test_other_unreadable_data_is_refused(tmp_path, tiny):
    good = write(tmp_path / "good.json", nested([GOOD]))
    (tmp_path / "broken.json").write_text('{"data": [')
    unanswered = write(tmp_path / "v2.json", nested([{**GOOD, "answers": [], "is_impossible": True}]))
    base = ["--model_name_or_path", tiny, "--output_dir", tmp_path / "out", "--max_seq_length", 64,
            "--max_query_length", 16, "--doc_stride", 16, *FAST]  # fmt: skip
    for argv, words in (((tmp_path / "broken.json", good), "is not JSON"),
                        ((tmp_path / "nope.json", good), "no such file"),
                        ((unanswered, good, "--version_2_with_negative"), "no question has an answer")):  # fmt: skip
        line = input_error(run_qa.main, [*base, "--train_file", argv[0], "--validation_file", argv[1], *argv[2:]])
        assert words in line, line


@pytest.mark.parametrize("flags, words", [
    (("--doc_stride", 45), "--doc_stride 45 leaves no new context"),  # 64 - 16 - 3 = 45 context tokens
    (("--doc_stride", -1), "--doc_stride -1"),
    (("--n_best_size", 0), "--n_best_size 0"),
    (("--max_query_length", 0), "--max_query_length 0"),
    (("--max_answer_length", 0), "--max_answer_length 0"),
    (("--null_score_diff_threshold", "nan"), "--null_score_diff_threshold nan"),
    (("--alpha_squad", -1), "--alpha_squad -1"),
    (("--alpha_squad", "inf"), "--alpha_squad inf"),
    (("--alpha_squad", 0), "nothing to learn from"),
    (("--alpha_ce", 1), "--alpha_ce needs --teacher_name_or_path"),
    (("--temperature", 3), "--temperature needs --teacher_name_or_path"),
    (("--teacher_name_or_path", "T", "--temperature", 0), "--temperature 0"),
    (("--teacher_name_or_path", "T", "--alpha_ce", 0), "--alpha_ce 0"),
    (("--seeds", 0), "--seeds"),
])  # fmt: skip
def test_bad_flags_are_refused_in_one_line(tmp_path, tiny, flags, words):
    good = write(tmp_path / "good.json", nested([GOOD]))
    line = input_error(run_qa.main, ["--model_name_or_path", tiny, "--train_file", good, "--validation_file", good,
                                     "--output_dir", tmp_path / "out", "--max_seq_length", 64,
                                     "--max_query_length", 16, "--doc_stride", 16, *FAST, *flags])  # fmt: skip
    assert words in line, line


@pytest.mark.parametrize("sources, words", [
    ((), "give --train_file and --validation_file"),
    (("--train_file", "t.json"), "give --train_file and --validation_file"),
    (("--dataset_name", "squad", "--train_file", "t.json", "--validation_file", "v.json"), "not both"),
    (("--dataset_name", "squad_v2"), "add --version_2_with_negative"),
])  # fmt: skip
def test_where_the_data_comes_from_is_checked_first(tmp_path, tiny, sources, words):
    line = input_error(run_qa.main, ["--model_name_or_path", tiny, "--output_dir", tmp_path / "out", *sources])
    assert words in line, line


def test_an_unreachable_hub_dataset_is_one_line(tmp_path, tiny):
    line = input_error(run_qa.main, ["--model_name_or_path", tiny, "--output_dir", tmp_path / "out",
                                     "--dataset_name", "no_such_squad_here", "--max_seq_length", 64,
                                     "--max_query_length", 16, "--doc_stride", 16])  # fmt: skip
    assert "cannot load 'no_such_squad_here' from the hub" in line


def test_a_teacher_must_be_a_qa_model_with_the_students_tokenization(tmp_path, tiny, tokenizer_dir):
    good = write(tmp_path / "good.json", nested([GOOD]))
    other_tok = write_bert_vocab(tmp_path / "other_tok", ["riverburg", "founded", "what"])
    tok = BertTokenizer.from_pretrained(str(other_tok))
    other = tmp_path / "other_qa"
    BertForQuestionAnswering(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64,
                                        max_position_embeddings=64)).save_pretrained(other)  # fmt: skip
    tok.save_pretrained(other)
    for teacher, words in ((tiny, "is not a question-answering model"), (other, "need one tokenization")):
        line = input_error(run_qa.main, ["--model_name_or_path", tiny, "--train_file", good, "--validation_file", good,
                                         "--output_dir", tmp_path / "out", "--max_seq_length", 64,
                                         "--max_query_length", 16, "--doc_stride", 16, *FAST,
                                         "--teacher_name_or_path", teacher])  # fmt: skip
        assert words in line, line


# ----------------------------------------------------------------------------------------------------------
# The distillation losses, against numpy window by window


def np_log_softmax(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def test_span_losses_equal_a_per_window_computation_over_real_tokens_only():
    g = torch.Generator().manual_seed(0)
    lengths, width, T = [3, 5, 8], 8, 2.0
    mask = torch.tensor([[k < n for k in range(width)] for n in lengths])
    s_start, s_end, t_start, t_end = (torch.randn(3, width, generator=g) * 3 for _ in range(4))
    starts, ends = torch.tensor([1, 4, 0]), torch.tensor([2, 4, 7])
    ce, kd = [], []
    for i, n in enumerate(lengths):
        for s, t, gold in ((s_start, t_start, starts), (s_end, t_end, ends)):
            s_i, t_i = s[i, :n].numpy().astype(np.float64), t[i, :n].numpy().astype(np.float64)
            ce.append(-np_log_softmax(s_i)[gold[i]])
            p = np.exp(np_log_softmax(t_i / T))
            kd.append((p * (np.log(p) - np_log_softmax(s_i / T))).sum() * T**2)
    # each loss: the mean over windows of start and of end, the two averaged
    assert qa_distill.span_loss(s_start, s_end, starts, ends, mask).item() == pytest.approx(np.mean(ce), rel=1e-5)
    assert qa_distill.span_kd(s_start, s_end, t_start, t_end, mask, T).item() == pytest.approx(np.mean(kd), rel=1e-5)
    # padding does not count: other logits there change nothing
    noise = torch.where(mask, 0.0, torch.randn(3, width, generator=g) * 50)
    assert qa_distill.span_kd(s_start + noise, s_end - noise, t_start - noise, t_end + noise, mask, T).item() == \
        pytest.approx(np.mean(kd), rel=1e-5)  # fmt: skip
    noisy_ce = qa_distill.span_loss(s_start + noise, s_end, starts, ends, mask).item()
    assert noisy_ce == pytest.approx(np.mean(ce), rel=1e-5)


def test_span_kd_is_zero_for_a_student_equal_to_its_teacher_and_grows_with_the_gap():
    g = torch.Generator().manual_seed(1)
    t, mask = torch.randn(2, 6, generator=g), torch.ones(2, 6, dtype=torch.bool)
    assert qa_distill.span_kd(t, t, t, t, mask, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    near = qa_distill.span_kd(t + 0.1 * torch.randn(2, 6, generator=g), t, t, t, mask, 2.0).item()
    far = qa_distill.span_kd(t + 2.0 * torch.randn(2, 6, generator=g), t, t, t, mask, 2.0).item()
    assert 0 < near < far


def test_the_teachers_cached_logits_equal_the_teacher_run_window_by_window(tmp_path, syn_qa, tokenizer_dir):
    import datasets

    tok = BertTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    teacher = BertForQuestionAnswering(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                                  num_attention_heads=2, intermediate_size=64,
                                                  max_position_embeddings=64)).eval()  # fmt: skip
    exs = qa.load_split(str(syn_qa / "v1" / "dev-v1.1.json"), "dev", False, False).examples[:20]
    cols = qa.features(tok, exs, 48, 8, 16, training=True)
    ds = datasets.Dataset.from_dict({k: cols[k] for k in ("input_ids", "token_type_ids", "attention_mask")})
    assert len({len(ids) for ids in cols["input_ids"]}) > 1  # windows of several lengths: batches are padded
    targs = SimpleNamespace(fp16=False, bf16=False, per_device_eval_batch_size=4, device=torch.device("cpu"),
                            process_index=0, disable_tqdm=True)  # fmt: skip
    identity = {"model": "a tiny QA teacher", "weights": "seed 0"}
    got = qa_distill.with_teacher_logits(teacher, identity, ds, tok, targs, str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    again = qa_distill.with_teacher_logits(None, identity, ds, tok, targs, str(tmp_path / "cache"))  # a hit: no model
    with torch.no_grad():
        for i, ids in enumerate(cols["input_ids"]):
            out = teacher(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([cols["token_type_ids"][i]]))
            pairs = ((qa_distill.TEACHER_START, out.start_logits[0]), (qa_distill.TEACHER_END, out.end_logits[0]))
            for name, mine in pairs:
                assert len(got[i][name]) == len(ids)
                np.testing.assert_allclose(got[i][name], mine.numpy(), atol=1e-5)
                assert again[i][name] == got[i][name]
    torch.manual_seed(1)  # another teacher (another identity): a miss, computed anew and kept beside the first
    other = BertForQuestionAnswering(teacher.config).eval()
    new = qa_distill.with_teacher_logits(other, {**identity, "weights": "seed 1"}, ds, tok, targs,
                                         str(tmp_path / "cache"))  # fmt: skip
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    assert not np.allclose(new[0][qa_distill.TEACHER_START], got[0][qa_distill.TEACHER_START])


# ----------------------------------------------------------------------------------------------------------
# End to end on tiny models


def answers_alone(folder, dev):
    """A saved QA model's answers to the dev questions, each window run on its own (no batch, no padding), with
    qa_argv's window settings."""
    model = AutoModelForQuestionAnswering.from_pretrained(str(folder)).eval()
    cols = qa.features(AutoTokenizer.from_pretrained(str(folder)), dev.examples, 64, 16, 24, training=False)
    with torch.no_grad():
        outs = [model(**{k: torch.tensor([cols[k][i]]) for k in ("input_ids", "token_type_ids", "attention_mask")})
                for i in range(len(cols["input_ids"]))]  # fmt: skip
    answers, _, _ = qa.postprocess(dev.examples, cols, [o.start_logits[0].numpy() for o in outs],
                                   [o.end_logits[0].numpy() for o in outs])  # fmt: skip
    return answers


def qa_argv(model, data, out, *extra, version="v1"):
    split = {"v1": "v1.1", "v2": "v2.0"}[version]
    return ["--model_name_or_path", model, "--train_file", data / version / f"train-{split}.json",
            "--validation_file", data / version / "dev.flat.json", "--output_dir", out, "--max_seq_length", 64,
            "--max_query_length", 24, "--doc_stride", 16, "--max_train_samples", 200, "--max_eval_samples", 60,
            "--learning_rate", 1e-3, "--per_device_train_batch_size", 16, *FAST, *extra,
            *(["--version_2_with_negative"] if version == "v2" else [])]  # fmt: skip


@pytest.mark.slow
def test_a_qa_teacher_is_saved_then_distilled_into_a_student_and_runs_are_kept(tmp_path, tiny, syn_qa):
    out_t = tmp_path / "teacher"
    run_main(run_qa.main, *qa_argv(tiny, syn_qa, out_t, "--max_steps", 40, "--save_model"), check=True)
    run = out_t / "squad" / "lr0.001_seed42"
    result = json.loads((run / "results.json").read_text())
    dev = qa.load_split(str(syn_qa / "v1" / "dev.flat.json"), "dev", False, False).head(60)
    preds = json.loads((run / "predictions.json").read_text())
    nbest = json.loads((run / "nbest_predictions.json").read_text())
    assert set(preds) == set(nbest) == {e.id for e in dev.examples}
    assert result["metrics"]["dev"] == pytest.approx(qa.squad_metrics(dev.examples, preds))
    assert result["steps"] == 40 and result["hyper_parameters"]["eval_data"] == dev.digest
    assert not (run / "null_odds.json").exists()

    # the saved model reproduces its own predictions (transformers 5 has no question-answering pipeline)
    assert answers_alone(run / "model", dev) == preds

    # the same model, now distilled from the saved teacher; the teacher's logits kept, then read
    cache = tmp_path / "cache"
    kd = ("--teacher_name_or_path", run / "model", "--alpha_ce", 0.7, "--alpha_squad", 0.3, "--temperature", 3,
          "--teacher_logits_cache", cache, "--max_steps", 10)  # fmt: skip
    proc = run_main(run_qa.main, *qa_argv(tiny, syn_qa, tmp_path / "student", *kd), check=True)
    assert "took" in proc.stdout and len(list(cache.glob("*.npy"))) == 1
    student = json.loads((tmp_path / "student" / "results.json").read_text())
    assert student["teacher"]["alpha_ce"] == 0.7 and student["teacher"]["temperature"] == 3
    kept = run_main(run_qa.main, *qa_argv(tiny, syn_qa, tmp_path / "student", *kd), check=True)
    assert "kept" in kept.stdout and "fine-tuning" not in kept.stdout
    redo = run_main(run_qa.main, *qa_argv(tiny, syn_qa, tmp_path / "student", *kd, "--overwrite_output_dir"),
                    check=True)  # fmt: skip
    assert "read from" in redo.stdout
    hotter = [*kd[:7], 4, *kd[8:]]  # --temperature 4: another distillation, not the kept run
    line = input_error(run_qa.main, qa_argv(tiny, syn_qa, tmp_path / "student", *hotter))
    assert "was run with other settings" in line and "temperature" in line, line


@pytest.mark.slow
def test_squad_v2_writes_null_odds_and_scores_both_kinds_of_question(tmp_path, tiny, syn_qa):
    out = tmp_path / "v2"
    run_main(run_qa.main, *qa_argv(tiny, syn_qa, out, "--max_steps", 6, "--seeds", 2, version="v2"), check=True)
    summary = json.loads((out / "results.json").read_text())["tasks"]["squad_v2"]
    assert set(summary["metrics"]["dev"]) == {"exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"}
    for seed in (42, 43):
        run = out / "squad_v2" / f"lr0.001_seed{seed}"
        odds = json.loads((run / "null_odds.json").read_text())
        preds = json.loads((run / "predictions.json").read_text())
        assert set(odds) == set(preds) and len(preds) == 60
        assert all((preds[q] == "") == (odds[q] > 0) for q in preds)  # threshold 0
        assert all(math.isfinite(v) for v in odds.values())
    assert not any(Path(out).rglob("checkpoint-*"))


@pytest.mark.slow
def test_a_stopped_run_resumes_and_a_failed_overwrite_keeps_the_old_run(tmp_path, tiny, syn_qa, monkeypatch):
    out = tmp_path / "resume"
    argv = qa_argv(tiny, syn_qa, out, "--max_steps", 4, "--save_strategy", "steps", "--save_steps", 2)
    run = out / "squad" / "lr0.001_seed42"

    def stopped(*args, **kwargs):
        raise RuntimeError("stopped after training, before the answers")

    with monkeypatch.context() as m:
        m.setattr(qa, "postprocess", stopped)
        with pytest.raises(RuntimeError):
            run_main(run_qa.main, *argv)
    assert (run / "checkpoint-4").is_dir() and not (run / "results.json").exists()
    resumed = run_main(run_qa.main, *argv, check=True)
    assert f"resuming from {run / 'checkpoint-4'}" in resumed.stdout, resumed.stdout
    first = (run / "results.json").read_text()
    assert json.loads(first)["steps"] == 4 and not list(run.glob("checkpoint-*"))

    with monkeypatch.context() as m:  # a replacement that fails puts the finished run back as it was
        m.setattr(qa, "postprocess", stopped)
        with pytest.raises(RuntimeError):
            run_main(run_qa.main, *argv, "--overwrite_output_dir")
    assert (run / "results.json").read_text() == first
    assert not any(p.name.endswith(("overwrite", "aside")) for p in run.parent.iterdir()), list(run.parent.iterdir())


@pytest.mark.slow
def test_torchrun_distils_on_two_processes_and_answers_in_order(tmp_path, tiny, syn_qa):
    teacher = tmp_path / "teacher"
    run_main(run_qa.main, *qa_argv(tiny, syn_qa, teacher, "--max_steps", 6, "--save_model"), check=True)
    teacher_model = teacher / "squad" / "lr0.001_seed42" / "model"
    out = tmp_path / "ddp"
    argv = qa_argv(tiny, syn_qa, out, "--num_train_epochs", 1, "--save_model", "--teacher_name_or_path",
                   teacher_model, "--teacher_logits_cache", "off")  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "scripts" / "run_qa.py"), *map(str, argv)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "squad" / "lr0.001_seed42"
    result = json.loads((run / "results.json").read_text())
    assert result["hyper_parameters"]["world_size"] == 2 and result["teacher"]["path"] == str(teacher_model)
    assert proc.stdout.count("squad lr 0.001 seed 42: exact_match") == 1  # one process reports
    # the two processes' answers, gathered, are each question's own: the saved student gives them alone
    dev = qa.load_split(str(syn_qa / "v1" / "dev.flat.json"), "dev", False, False).head(60)
    assert answers_alone(run / "model", dev) == json.loads((run / "predictions.json").read_text())
