"""Question answering with distillation (qa.py, qa_distill.py, scripts/run_qa.py, scripts/make_qa_data.py).

Windows, labels and post-processing on hand-worked examples; SQuAD's official EM/F1 against hand computations;
both JSON forms and the real SQuAD v1.1 sample that allennlp 0.9.0's wheel ships; every bad input and flag in
one line; the distillation losses against a per-window numpy computation; the teacher's cached logits against
the teacher run window by window; and tiny models end to end (a QA teacher saved, then distilled into a
student; v1.1 and v2.0; kept runs; the saved model reproducing its own predictions)."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertTokenizer,
)

from conftest import input_error, run_main, write_bert_vocab
from glue_helpers import FAST
from scripts import make_qa_data, run_qa
from tasks import qa

# The fixtures `letters` (a tokenizer of single letters), `syn_qa` (generated sets) and `tiny`: tests/fixtures_qa.py
CONTEXT = "a b c d e f g h i j"  # one token per letter; letter k starts at character 2k


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
           example([("x", 0)], "q3")]
    m = qa.squad_metrics(exs, {"q1": "the Broncos", "q2": "the cat sat on"})
    assert m == {"exact_match": pytest.approx(1 / 3), "f1": pytest.approx((1 + 0.8 + 0) / 3)}


def test_squad_v2_metrics_split_answerable_and_unanswerable_questions():
    exs = [example([("cat sat", 0)], "has1"), example([("dog", 0)], "has2"), example([], "no1"),
           example([], "no2")]
    m = qa.squad_metrics(exs, {"has1": "cat sat on", "has2": "", "no1": "", "no2": "dog"}, version_2=True)
    assert m == pytest.approx({"exact": 1 / 4, "f1": (0.8 + 0 + 1 + 0) / 4, "HasAns_exact": 0.0,
                               "HasAns_f1": 0.4, "NoAns_exact": 0.5, "NoAns_f1": 0.5})


# ----------------------------------------------------------------------------------------------------------
# Data: both JSON forms, the real SQuAD sample, a generated set


def test_the_nested_and_the_flat_forms_read_as_the_same_questions(syn_qa):
    for version, split in (("v1", "train-v1.1.json"), ("v2", "dev-v2.0.json")):
        nested = qa.load_split(str(syn_qa / version / split), "x", version == "v2", False)
        flat = qa.load_split(str(syn_qa / version / f"{split.split('-')[0]}.flat.json"), "x", version == "v2", False)
        assert len(nested) > 100 and nested.examples == flat.examples and nested.digest == flat.digest
        records = json.loads((syn_qa / version / f"{split.split('-')[0]}.flat.json").read_text())["data"]
        lines = syn_qa / version / "lines.jsonl"  # JSON lines of flat records, and answers as a list of objects
        lines.write_text("".join(json.dumps({**r, "answers": [{"text": t, "answer_start": s} for t, s in zip(
            r["answers"]["text"], r["answers"]["answer_start"])]}) + "\n" for r in records))
        assert qa.load_split(str(lines), "x", version == "v2", False).examples == nested.examples
    v2 = qa.load_split(str(syn_qa / "v2" / "train-v2.0.json"), "train", True, True)
    assert 0.2 < sum(not e.answers for e in v2.examples) / len(v2) < 0.45  # about a third asked elsewhere


def test_generated_questions_are_their_context_sentence_with_the_answer_replaced(syn_qa):
    for e in qa.load_split(str(syn_qa / "v1" / "dev-v1.1.json"), "dev", False, False).examples:
        ((text, start),) = e.answers
        after = e.context[start + len(text) :]
        cuts = [i for i in range(len(e.question)) if e.question.startswith("what", i)]  # which "what" is the blank
        assert any(e.context[start - i : start] == e.question[:i] and after.startswith(e.question[i + 4 : -1])
                   for i in cuts), e


def test_make_qa_data_refuses_bad_sources_and_flags_and_writes_nothing(tmp_path):
    (tmp_path / "plain.txt").write_text("no names or numbers here at all, only words\n" * 20)
    (tmp_path / "empty_rte").mkdir()
    for argv, words in (((tmp_path / "missing.jsonl",), "no such file"),
                        ((tmp_path / "empty_rte",), "holds no train-"),
                        ((tmp_path / "plain.txt",), "gave no questions"),
                        ((tmp_path / "plain.txt", "--paragraphs", 0), "--paragraphs 0"),
                        ((tmp_path / "plain.txt", "--max_train_questions", 0), "--max_train_questions 0")):
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
    # values of the wrong type or range, and data that raised a traceback
    ("is_impossible a string", {**nested([{**GOOD, "answers": [], "is_impossible": "false"}]), "version": "v2.0"},
     "'is_impossible' is 'false': give true or false (JSON booleans)"),
    ("is_impossible a number", nested([{**GOOD, "is_impossible": 0}]), "'is_impossible' is 0: give true or false"),
    ("negative answer_start", nested([{**GOOD, "answers": [{"text": "1477.", "answer_start": -5}]}]),
     "answer_start -5 is negative"),
    ("answer start a boolean", nested([{**GOOD, "answers": [{"text": "R", "answer_start": False}]}]),
     "integer 'answer_start'"),
    ("context of zero-width spaces", nested([{**GOOD, "answers": []}], context="\u200b\ufeff \u200b"),
     "has an empty context (nothing but spaces or invisible characters)"),
    ("question of invisible characters", nested([{**GOOD, "question": "\u200b\u200d"}]), "is empty (nothing but"),
    ("answer text of invisible characters", nested([{**GOOD, "answers": [{"text": "\u200b", "answer_start": 0}]}],
                                                   context="\u200bRiverburg"), "needs a non-empty 'text'"),
    ("qas holding strings", nested(["what?", "when?"]), "question 0 is a str, not an object with id"),
    ("qas empty everywhere", nested([]), "holds no questions (every paragraph's 'qas' is empty?)"),
])
def test_bad_data_is_refused_in_one_line_before_training(tmp_path, tiny, case, obj, words):
    good = write(tmp_path / "good.json", nested([GOOD]))
    bad = write(tmp_path / "bad.json", obj)
    for train, dev in ((bad, good), (good, bad)):
        line = input_error(run_qa.main, ["--model_name_or_path", tiny, "--train_file", train, "--validation_file",
                                         dev, "--output_dir", tmp_path / "out", "--max_seq_length", 64,
                                         "--max_query_length", 16, "--doc_stride", 16, *FAST])
        assert words in line, (case, line)
    assert not (tmp_path / "out" / "results.json").exists() and not (tmp_path / "out" / "squad").exists()


def test_other_unreadable_data_is_refused(tmp_path, tiny):
    good = write(tmp_path / "good.json", nested([GOOD]))
    (tmp_path / "broken.json").write_text('{"data": [')
    unanswered = write(tmp_path / "v2.json", nested([{**GOOD, "answers": [], "is_impossible": True}]))
    base = ["--model_name_or_path", tiny, "--output_dir", tmp_path / "out", "--max_seq_length", 64,
            "--max_query_length", 16, "--doc_stride", 16, *FAST]
    v2 = write(tmp_path / "v2_mixed.json", nested([{**GOOD, "id": "0", "answers": [], "is_impossible": True}, GOOD]))
    for argv, words in (((tmp_path / "broken.json", good), "is not JSON"),
                        ((tmp_path / "nope.json", good), "no such file"),
                        ((unanswered, good, "--version_2_with_negative"), "no question has an answer"),
                        # the check runs on the questions used: the first one, here, has no answer
                        ((v2, good, "--version_2_with_negative", "--max_train_samples", 1),
                         "no question has an answer")):
        line = input_error(run_qa.main, [*base, "--train_file", argv[0], "--validation_file", argv[1], *argv[2:]])
        assert words in line, line


@pytest.mark.parametrize("flags, words", [
    (("--doc_stride", 45), "--doc_stride 45 leaves no new context"),  # 64 - 16 - 3 = 45 context tokens
    (("--max_query_length", 70), "--max_query_length 70 leaves no room for the context in windows of 64 tokens "
     "(--max_seq_length, with 3 special tokens): give less than 61"),  # named, not --doc_stride
    (("--doc_stride", -1), "--doc_stride -1"),
    (("--n_best_size", 0), "--n_best_size 0"),
    (("--max_query_length", 0), "--max_query_length 0"),
    (("--max_answer_length", 0), "--max_answer_length 0"),
    (("--null_score_diff_threshold", "nan"), "--null_score_diff_threshold nan"),
    (("--teacher_name_or_path", "T", "--alpha_squad", -1), "--alpha_squad -1"),
    (("--teacher_name_or_path", "T", "--alpha_squad", "inf"), "--alpha_squad inf"),
    (("--alpha_squad", 0.5), "--alpha_squad needs --teacher_name_or_path"),  # alone, the span loss weighs 1
    (("--alpha_ce", 1), "--alpha_ce needs --teacher_name_or_path"),
    (("--temperature", 3), "--temperature needs --teacher_name_or_path"),
    (("--transfer_file", "t.json"), "--transfer_file needs --teacher_name_or_path"),
    (("--teacher_name_or_path", "T", "--temperature", 0), "--temperature 0"),
    (("--teacher_name_or_path", "T", "--alpha_ce", 0), "--alpha_ce 0"),
    (("--seeds", 0), "--seeds"),
])
def test_bad_flags_are_refused_in_one_line(tmp_path, tiny, flags, words):
    good = write(tmp_path / "good.json", nested([GOOD]))
    line = input_error(run_qa.main, ["--model_name_or_path", tiny, "--train_file", good, "--validation_file", good,
                                     "--output_dir", tmp_path / "out", "--max_seq_length", 64,
                                     "--max_query_length", 16, "--doc_stride", 16, *FAST, *flags])
    assert words in line, line


@pytest.mark.parametrize("sources, words", [
    ((), "give --train_file and --validation_file"),
    (("--train_file", "t.json"), "give --train_file and --validation_file"),
    (("--dataset_name", "squad", "--train_file", "t.json", "--validation_file", "v.json"), "not both"),
    (("--dataset_name", "squad_v2"), "add --version_2_with_negative"),
])
def test_where_the_data_comes_from_is_checked_first(tmp_path, tiny, sources, words):
    line = input_error(run_qa.main, ["--model_name_or_path", tiny, "--output_dir", tmp_path / "out", *sources])
    assert words in line, line


def test_an_unreachable_hub_dataset_is_one_line(tmp_path, tiny):
    line = input_error(run_qa.main, ["--model_name_or_path", tiny, "--output_dir", tmp_path / "out",
                                     "--dataset_name", "no_such_squad_here", "--max_seq_length", 64,
                                     "--max_query_length", 16, "--doc_stride", 16])
    assert "cannot load 'no_such_squad_here' from the hub" in line


def test_a_teacher_must_be_a_qa_model_with_the_students_tokenization(tmp_path, tiny, tokenizer_dir):
    good = write(tmp_path / "good.json", nested([GOOD]))
    other_tok = write_bert_vocab(tmp_path / "other_tok", ["riverburg", "founded", "what"])
    tok = BertTokenizer.from_pretrained(str(other_tok))
    other = tmp_path / "other_qa"
    BertForQuestionAnswering(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64,
                                        max_position_embeddings=64)).save_pretrained(other)
    tok.save_pretrained(other)
    for teacher, words in ((tiny, "is not a question-answering model"), (other, "needs one tokenization")):
        line = input_error(run_qa.main, ["--model_name_or_path", tiny, "--train_file", good, "--validation_file", good,
                                         "--output_dir", tmp_path / "out", "--max_seq_length", 64,
                                         "--max_query_length", 16, "--doc_stride", 16, *FAST,
                                         "--teacher_name_or_path", teacher])
        assert words in line, line


def test_a_teacher_with_fewer_positions_limits_the_windows(tmp_path, tiny, tokenizer_dir):
    """The windows are read by the teacher too: its 40 positions, fewer than the student's 64 and than
    --max_seq_length, set their length, as run_glue.py does (this was an IndexError)."""
    good = write(tmp_path / "good.json", nested([GOOD, {**GOOD, "id": "2"}]))
    tok = BertTokenizer.from_pretrained(str(tokenizer_dir))
    short = tmp_path / "short_teacher"
    torch.manual_seed(0)
    BertForQuestionAnswering(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64,
                                        max_position_embeddings=40)).save_pretrained(short)
    tok.save_pretrained(short)
    proc = run_main(run_qa.main, "--model_name_or_path", tiny, "--train_file", good, "--validation_file", good,
                    "--output_dir", tmp_path / "out", "--max_seq_length", 64, "--max_query_length", 16,
                    "--doc_stride", 8, "--max_steps", 1, *FAST, "--teacher_name_or_path", short)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--max_seq_length 64 is more than the model or its teacher takes: 40" in proc.stdout
    run = json.loads(next((tmp_path / "out" / "squad").glob("lr*/results.json")).read_text())
    assert run["hyper_parameters"]["max_seq_length"] == 40
