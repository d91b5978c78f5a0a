"""Extractive question answering for scripts/run_qa.py: SQuAD's data, checked; questions and contexts cut into
features; start/end logits turned back into answers; and SQuAD's official exact match and F1.

Data: SQuAD v1.1 / v2.0 in the official nested JSON (data -> paragraphs -> qas), the hub's flat form (one
record per question: id, question, context, answers {text: [...], answer_start: [...]}), as a JSON list, a
{"data": [...]} object or JSON lines, or a hub name (squad, squad_v2) where the network is there.

Features follow transformers' run_qa.py: the fast tokenizer reads (question, context) pairs, truncating only
the context into windows of --max_seq_length tokens that overlap by --doc_stride tokens; a window that does
not hold the whole answer (and every window of an unanswerable question) points at the [CLS] token.

The metrics are the official evaluation scripts' (evaluate-v1.1.py, evaluate-v2.0.py): answers normalised
(lower case, no punctuation, no articles a/an/the, single spaces), the best score over the gold answers; for
v2.0 an unanswerable question is right only when the prediction is empty, with HasAns_ / NoAns_ splits. They
are written here as fractions (0-1), as run_glue.py writes its metrics; the scripts print percentages.
"""

import collections
import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import InputError, first_line
from core.tables import visible


@dataclass
class Example:
    id: str
    question: str
    context: str
    answers: list  # [(text, start character)]; empty: unanswerable (v2.0)
    title: str = ""


@dataclass
class QAData:
    """One split's questions, where they came from, and a digest of their content (for kept-run checks)."""

    name: str
    examples: list
    source: str
    skipped: int = 0
    digest: str = field(init=False)

    def __post_init__(self):
        h = hashlib.sha256()
        for e in self.examples:
            h.update(json.dumps([e.id, e.question, e.context, e.answers]).encode())
        self.digest = h.hexdigest()[:16]

    def __len__(self):
        return len(self.examples)

    def head(self, n):
        return self if n is None or n >= len(self) else QAData(self.name, self.examples[:n], self.source)


# ----------------------------------------------------------------------------------------------------------
# Reading SQuAD's two JSON forms


def read_records(path):
    """The JSON of `path`: one document, or JSON lines."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except ValueError as e:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > 1:
            try:
                return [json.loads(line) for line in lines]
            except ValueError:
                pass
        raise InputError(f"{path} is not JSON or JSON lines ({first_line(e)})") from None


def flat_answers(answers, where):
    """[(text, start)] from the flat form's {text: [...], answer_start: [...]} or a list of {text, answer_start}."""
    if isinstance(answers, dict):
        texts, starts = answers.get("text"), answers.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise InputError(f"{where}: 'answers' needs lists 'text' and 'answer_start' of one length")
        return list(zip(texts, starts))
    if isinstance(answers, list) and all(isinstance(a, dict) for a in answers):
        return [(a.get("text"), a.get("answer_start")) for a in answers]
    raise InputError(f"{where}: 'answers' is neither {{text: [...], answer_start: [...]}} nor a list of answers")


def parse(obj, path):
    """Examples from either JSON form (nested: data -> paragraphs -> qas; flat: one record per question)."""
    records = obj.get("data") if isinstance(obj, dict) else obj
    if not isinstance(records, list) or not records:
        raise InputError(f"{path} holds no questions: give SQuAD's JSON (data -> paragraphs -> qas) or records "
                         "with id, question, context and answers")
    out = []
    if isinstance(records[0], dict) and "paragraphs" in records[0]:
        for a, article in enumerate(records):
            for p, para in enumerate(need(article, "paragraphs", f"{path}: article {a}", list)):
                where = f"{path}: article {a}, paragraph {p}"
                context = need(para, "context", where, str)
                for q, qa in enumerate(need(para, "qas", where, list)):
                    where_q = f"{where}, question {q}"
                    if not isinstance(qa, dict):
                        raise InputError(f"{where_q} is a {type(qa).__name__}, not an object with id, question and "
                                         "answers")
                    impossible = qa.get("is_impossible", False)
                    if not isinstance(impossible, bool):  # "false", a string, is true to Python
                        raise InputError(f"{where_q}: 'is_impossible' is {impossible!r}: give true or false (JSON "
                                         "booleans)")
                    answers = [] if impossible else need(qa, "answers", where_q, list)
                    out.append(Example(str(need(qa, "id", where_q)), need(qa, "question", where_q, str), context,
                                       flat_answers(answers, where_q), str(article.get("title", ""))))
        return out
    for i, rec in enumerate(records):
        where = f"{path}: record {i}"
        if not isinstance(rec, dict):
            raise InputError(f"{where} is not an object with id, question, context and answers")
        out.append(Example(str(need(rec, "id", where)), need(rec, "question", where, str),
                           need(rec, "context", where, str), flat_answers(need(rec, "answers", where), where),
                           str(rec.get("title", ""))))
    return out


def need(obj, key, where, kind=None):
    if not isinstance(obj, dict) or key not in obj:
        raise InputError(f"{where} has no {key!r}")
    if kind is not None and not isinstance(obj[key], kind):
        raise InputError(f"{where}: {key!r} is not a {kind.__name__}")
    return obj[key]


def check(examples, where, version_2, training):
    """Every question that is used, before any training: an id once, a question, a context, and answers that
    are where they say they are (texts that show something, integer offsets inside the context). v1.1
    questions all have an answer; a training set needs one question with an answer."""
    if not examples:
        raise InputError(f"{where} holds no questions (every paragraph's 'qas' is empty?)")
    seen = set()
    for e in examples:
        name = f"{where}: question {e.id!r}"
        if e.id in seen:
            raise InputError(f"{name} appears twice: ids must be unique (predictions are keyed by them)")
        seen.add(e.id)
        if not visible(e.question):
            raise InputError(f"{name} is empty (nothing but spaces or invisible characters)")
        if not visible(e.context):
            raise InputError(f"{name} has an empty context (nothing but spaces or invisible characters)")
        if not e.answers and not version_2:
            raise InputError(f"{name} has no answer: SQuAD 2.0 data (unanswerable questions) needs "
                             "--version_2_with_negative")
        for text, start in e.answers:
            if not isinstance(text, str) or not visible(text) or not isinstance(start, int) or isinstance(start, bool):
                raise InputError(f"{name}: an answer needs a non-empty 'text' and an integer 'answer_start'")
            if start < 0:  # Python would find it counting from the end of the context
                raise InputError(f"{name}: answer_start {start} is negative: give its offset from the context's start")
            if e.context[start : start + len(text)] != text:
                found = e.context[max(start, 0) : max(start, 0) + len(text)]
                raise InputError(f"{name}: the answer {text!r} is not at answer_start {start} of its context "
                                 f"(there: {found!r})")
    if training and not any(e.answers for e in examples):
        raise InputError(f"{where}: no question has an answer: nothing to learn the spans from")


def load_split(source, split, version_2, training, limit=None):
    """One split's QAData from a JSON file, or a hub name (squad, squad_v2) with its split: its first `limit`
    questions (None: all), checked as they will be used (after the cut)."""
    path = Path(source)
    if path.is_file():
        examples = parse(read_records(path), path)
        shown = str(path)
    elif path.exists() or "/" in source or path.suffix in (".json", ".jsonl"):
        raise InputError(f"no such file: {source} (give a SQuAD JSON file, or a hub name such as squad)")
    else:
        import datasets

        try:
            ds = datasets.load_dataset(source, split=split)
        except Exception as e:  # offline, or no such dataset: one line that names it
            raise InputError(f"cannot load {source!r} from the hub ({first_line(e)}): give --train_file / "
                             "--validation_file with SQuAD's JSON")
        examples = [Example(str(r["id"]), r["question"], r["context"], flat_answers(r["answers"], source),
                            r.get("title", "")) for r in ds]
        shown = f"{source} ({split}) from the hub"
    examples = examples if limit is None else examples[:limit]
    check(examples, shown, version_2, training)
    return QAData(split, examples, shown)


# ----------------------------------------------------------------------------------------------------------
# Features: (question, context window) pairs


def cut_questions(tokenizer, questions, max_query_length):
    """Each question cut after its first max_query_length tokens (upstream's --max_query_length), as text."""
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    return [q if len(o) <= max_query_length else q[: o[max_query_length - 1][1]]
            for q, o in zip(questions, enc["offset_mapping"])]


def features(tokenizer, examples, max_seq_length, doc_stride, max_query_length, training):
    """Columns of the features of `examples` (a dict of lists). Training features carry start_positions and
    end_positions (the [CLS] token where the window does not hold the answer); every feature carries its
    example's index and its [CLS] position, and evaluation features the character span of each context token
    (None elsewhere)."""
    questions = cut_questions(tokenizer, [e.question.lstrip() for e in examples], max_query_length)
    enc = tokenizer(questions, [e.context for e in examples], truncation="only_second", max_length=max_seq_length,
                    stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    owners = enc.pop("overflow_to_sample_mapping")
    offsets = enc.pop("offset_mapping")
    out = {k: list(v) for k, v in enc.items()}
    out["example"] = list(owners)
    starts, ends, spans, heads = [], [], [], []
    for i, owner in enumerate(owners):
        seq = enc.sequence_ids(i)
        context = [k for k, s in enumerate(seq) if s == 1]
        spans.append([offsets[i][k] if seq[k] == 1 else None for k in range(len(seq))])
        cls = enc["input_ids"][i].index(tokenizer.cls_token_id) if tokenizer.cls_token_id in enc["input_ids"][i] else 0
        heads.append(cls)
        start = end = cls
        answers = examples[owner].answers
        if answers and context:
            text, char = answers[0]
            char_end = char + len(text)
            first, last = context[0], context[-1]
            if offsets[i][first][0] <= char and offsets[i][last][1] >= char_end:
                start = next(k for k in context if offsets[i][k][1] > char)
                end = next(k for k in reversed(context) if offsets[i][k][0] < char_end)
        starts.append(start)
        ends.append(end)
    out["cls_index"] = heads
    if training:
        out["start_positions"], out["end_positions"] = starts, ends
    else:
        out["offsets"] = spans
    return out


# ----------------------------------------------------------------------------------------------------------
# From logits back to answers


def postprocess(examples, feats, start_logits, end_logits, n_best_size=20, max_answer_length=30, version_2=False,
                null_threshold=0.0):
    """(predictions {id: text}, nbest {id: [candidates]}, null_odds {id: float} for v2.0) from the features'
    logits (rows may be padded past a feature's length). A span starts and ends inside one window's context,
    end not before start, at most max_answer_length tokens; its score is start + end logit. For v2.0 the null
    answer's score is the smallest [CLS] start + end over the question's windows, and the answer is empty when
    that score beats the best span's by more than null_threshold."""
    by_example = collections.defaultdict(list)
    for f, owner in enumerate(feats["example"]):
        by_example[owner].append(f)
    predictions, nbest, null_odds = {}, {}, {}
    for index, e in enumerate(examples):
        candidates, null = [], None
        for f in by_example[index]:
            spans = feats["offsets"][f]
            s, t = np.asarray(start_logits[f][: len(spans)]), np.asarray(end_logits[f][: len(spans)])
            cls = feats["cls_index"][f]
            score = float(s[cls] + t[cls])
            null = score if null is None or score < null else null
            for a in np.argsort(s)[::-1][:n_best_size]:
                for b in np.argsort(t)[::-1][:n_best_size]:
                    if spans[a] is None or spans[b] is None or b < a or b - a + 1 > max_answer_length:
                        continue
                    candidates.append({"text": e.context[spans[a][0] : spans[b][1]], "score": float(s[a] + t[b]),
                                       "start_logit": float(s[a]), "end_logit": float(t[b])})
        candidates = sorted(candidates, key=lambda c: -c["score"])[:n_best_size]
        best = candidates[0] if candidates else {"text": "", "score": 0.0, "start_logit": 0.0, "end_logit": 0.0}
        if version_2:
            candidates = sorted(candidates + [{"text": "", "score": null, "start_logit": None, "end_logit": None}],
                                key=lambda c: -c["score"])[:n_best_size]
            null_odds[e.id] = null - best["score"]
            predictions[e.id] = "" if null_odds[e.id] > null_threshold else best["text"]
        else:
            predictions[e.id] = best["text"]
        scores = np.array([c["score"] for c in candidates] or [0.0])
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        nbest[e.id] = [{**c, "probability": float(p)} for c, p in zip(candidates, probs)]
    return predictions, nbest, null_odds


# ----------------------------------------------------------------------------------------------------------
# The official metrics


def normalize_answer(s):
    """Lower case, no punctuation, no articles (a, an, the), single spaces: the official scripts' normalisation."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact(prediction, gold):
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction, gold):
    """Token overlap F1 of the normalised answers; an empty one scores 1 only against an empty one (v2.0)."""
    pred, true = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not true:
        return float(pred == true)
    same = sum((collections.Counter(pred) & collections.Counter(true)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(true)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(examples, predictions, version_2=False):
    """exact_match and f1 (v1.1), or exact, f1 and their HasAns_ / NoAns_ splits (v2.0), as fractions, each the
    mean over questions of the best score over the question's gold answers. A question without a prediction
    scores 0, as in the official scripts."""
    em, f = {}, {}
    for e in examples:
        golds = [t for t, _ in e.answers if normalize_answer(t)] or [""]
        pred = predictions.get(e.id)
        em[e.id] = max(exact(pred, g) for g in golds) if pred is not None else 0.0
        f[e.id] = max(f1(pred, g) for g in golds) if pred is not None else 0.0
    if not version_2:
        return {"exact_match": float(np.mean(list(em.values()))), "f1": float(np.mean(list(f.values())))}
    out = {"exact": float(np.mean(list(em.values()))), "f1": float(np.mean(list(f.values())))}
    for name, answerable in (("HasAns", True), ("NoAns", False)):
        part = [e for e in examples if bool(e.answers) == answerable]
        if part:
            out[f"{name}_exact"] = float(np.mean([em[e.id] for e in part]))
            out[f"{name}_f1"] = float(np.mean([f[e.id] for e in part]))
    return out
