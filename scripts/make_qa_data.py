"""Write a cloze question-answering set from real text, in SQuAD's two JSON forms, for run_qa.py offline.

    python scripts/make_qa_data.py --source ../shared/data/glue/rte --output_dir data/qa_rte
    python scripts/make_qa_data.py --source ../shared/data/glue/rte --output_dir data/qa_rte_v2 --version_2
    python scripts/make_qa_data.py --source demo_run/synthetic_wiki.jsonl --output_dir data/qa_wiki

SQuAD and the model hub are out of reach here, so the questions are made from text already at hand: GLUE
RTE's premises (real news and Wikipedia sentences; a folder of the hub's parquet files or GLUE's TSV), or the
paragraphs of articles (.jsonl or .parquet with a `text` column, paragraphs split at blank lines), or a text
file with one paragraph per line. A context is --paragraphs consecutive paragraphs joined; each of its
sentences that holds a name or a number (a run of capitalised words not opening the sentence, or digits)
becomes a question: the sentence with that span replaced by "what", the span its answer. With --version_2,
a third of the questions are asked of another context, where they have no answer (SQuAD 2.0's kind).

Writes, in --output_dir: train-v1.1.json and dev-v1.1.json (the official nested form: data -> paragraphs ->
qas), and train.flat.json and dev.flat.json (the hub's flat records); -v2.0 with --version_2. The train
split comes from the source's training rows and dev from its validation rows (RTE), or the last tenth.
"""

import argparse
import json
import random
import re
from pathlib import Path

import pyarrow.parquet as pq

from core.errors import InputError, reports_errors
from core.files import atomic_write, check_writable

SPAN = re.compile(r"(?<=\s)(?:[A-Z][\w'-]*(?:\s+(?:of\s+|de\s+)?[A-Z][\w'-]*){0,3}|\d[\d,.]*\d|\d)(?=[\s,.;:!?)]|$)")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def read_paragraphs(source):
    """(train paragraphs, dev paragraphs) of the source, in its order."""
    path = Path(source)
    if path.is_dir():  # GLUE RTE: the premises
        splits = []
        for split, tsv in (("train", "train.tsv"), ("validation", "dev.tsv")):
            files = sorted(path.glob(f"{split}-*.parquet"))
            if files:
                column = [pq.read_table(f, columns=["sentence1"])["sentence1"].to_pylist() for f in files]
                splits.append([t for texts in column for t in texts])
            elif (path / tsv).is_file():
                rows = (path / tsv).read_text(encoding="utf-8").splitlines()[1:]
                splits.append([r.split("\t")[1] for r in rows if r.count("\t") >= 2])
            else:
                raise InputError(f"{path} holds no {split}-*.parquet or {tsv}: give GLUE RTE's folder, an articles "
                                 "file (.jsonl/.parquet) or a text file")
        return [list(dict.fromkeys(s)) for s in splits]  # RTE repeats premises
    if not path.is_file():
        raise InputError(f"no such file or folder: {source}")
    if path.suffix in (".jsonl", ".parquet"):
        if path.suffix == ".parquet":
            texts = pq.read_table(path, columns=["text"])["text"].to_pylist()
        else:
            texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        paras = [p.strip() for t in texts for p in t.split("\n\n") if len(p.split()) >= 8]
    else:
        paras = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    cut = len(paras) - max(len(paras) // 10, 1)
    return paras[:cut], paras[cut:]


def cloze(sentence, rng):
    """(question, answer text, its offset in the sentence) for one span of the sentence, or None."""
    spans = [m for m in SPAN.finditer(sentence) if len(m.group()) >= 2]
    if not spans:
        return None
    m = rng.choice(spans)
    question = (sentence[: m.start()] + "what" + sentence[m.end() :]).rstrip(" .!") + "?"
    return question, m.group(), m.start()


def make_split(paragraphs, name, per_context, version_2, rng):
    """SQuAD articles (nested form) of one split."""
    contexts = [" ".join(paragraphs[i : i + per_context]) for i in range(0, len(paragraphs), per_context)]
    asked = []  # (context index, question, answer, start)
    for c, context in enumerate(contexts):
        at = 0
        for sentence in SENTENCE_END.split(context):
            at = context.index(sentence, at)
            made = cloze(sentence, rng)
            if made:
                question, answer, offset = made
                asked.append((c, question, answer, at + offset))
            at += len(sentence)
    qas = [[] for _ in contexts]
    for k, (c, question, answer, start) in enumerate(asked):
        qid = f"{name}-{k:06d}"
        if version_2 and len(contexts) > 1 and rng.random() < 1 / 3:  # asked of another context: no answer there
            other = rng.randrange(len(contexts) - 1)
            other += other >= c
            if answer not in contexts[other]:
                qas[other].append({"id": qid, "question": question, "answers": [], "is_impossible": True})
                continue
        assert contexts[c][start : start + len(answer)] == answer
        qas[c].append({"id": qid, "question": question, "answers": [{"text": answer, "answer_start": start}]})
        if version_2:
            qas[c][-1]["is_impossible"] = False
    return [{"title": f"{name} {c}", "paragraphs": [{"context": contexts[c], "qas": qas[c]}]}
            for c in range(len(contexts)) if qas[c]]


def flat(articles):
    """The hub's flat records of nested articles."""
    return [{"id": qa["id"], "title": a["title"], "context": p["context"], "question": qa["question"],
             "answers": {"text": [x["text"] for x in qa["answers"]],
                         "answer_start": [x["answer_start"] for x in qa["answers"]]}}
            for a in articles for p in a["paragraphs"] for qa in p["qas"]]


@reports_errors
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="GLUE RTE's folder, an articles .jsonl/.parquet, or a .txt")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--paragraphs", type=int, default=3, help="paragraphs joined into one context")
    parser.add_argument("--version_2", action="store_true", help="a third of the questions have no answer")
    parser.add_argument("--max_train_questions", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.paragraphs < 1:
        raise InputError(f"--paragraphs {args.paragraphs}: give at least 1")
    if args.max_train_questions is not None and args.max_train_questions < 1:
        raise InputError(f"--max_train_questions {args.max_train_questions}: give at least 1")
    out = Path(args.output_dir)
    check_writable(out, "--output_dir", folder=True)
    train, dev = read_paragraphs(args.source)
    rng = random.Random(args.seed)
    version = "v2.0" if args.version_2 else "v1.1"
    written = {}  # both splits made before either is written: a bad source leaves no half-written set
    for name, paras in (("train", train), ("dev", dev)):
        articles = make_split(paras, name, args.paragraphs, args.version_2, rng)
        if name == "train" and args.max_train_questions:
            kept, n = [], 0
            for a in articles:
                if n >= args.max_train_questions:
                    break
                kept.append(a)
                n += len(a["paragraphs"][0]["qas"])
            articles = kept
        if not articles:
            raise InputError(f"{args.source}: its {name} text gave no questions (no names or numbers in it)")
        written[name] = articles, flat(articles)
    out.mkdir(parents=True, exist_ok=True)
    for name, (articles, records) in written.items():
        with atomic_write(out / f"{name}-{version}.json", "w") as f:
            json.dump({"version": version[1:], "data": articles}, f)
        with atomic_write(out / f"{name}.flat.json", "w") as f:
            json.dump({"version": version[1:], "data": records}, f)
    for name, (_, records) in written.items():
        none = sum(not r["answers"]["text"] for r in records)
        unanswerable = f", {none:,} without an answer" if args.version_2 else ""
        contexts = len({r["context"] for r in records})
        target = out / f"{name}-{version}.json"
        print(f"{name}: {len(records):,} questions over {contexts:,} contexts{unanswerable} -> {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
