#!/usr/bin/env bash
# Offline demo of the recipe on a corpus the project generates itself; every step is the real script.
#
#   bash scripts/demo.sh [RUN_DIR]          # default RUN_DIR: demo_run/
#
# For now it runs the data pipeline (steps 1-3) on synthetic Wikipedia-schema articles with a WordPiece
# vocabulary trained on them (the model hub is not needed). Every file lands in RUN_DIR, so each script
# can be rerun by hand on it; rerunning the demo overwrites them.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-demo_run}
ARTICLES=${DEMO_ARTICLES:-3000}   # a few thousand articles: ~30k sentences, seconds per step
mkdir -p "$RUN"
PY=${PYTHON:-python}

echo "== corpus: $ARTICLES synthetic articles (title, text) -> $RUN/synthetic_wiki.jsonl"
$PY scripts/make_synthetic_wiki.py --num_articles "$ARTICLES" --output "$RUN/synthetic_wiki.jsonl"

echo "== step 1: extraction -> $RUN/dump.txt"
$PY scripts/extract_wikipedia.py --source "$RUN/synthetic_wiki.jsonl" --num_articles "$ARTICLES" \
    --output "$RUN/dump.txt"

echo "== tokenizer: WordPiece trained on the dump -> $RUN/wordpiece-uncased"
$PY scripts/train_wordpiece.py --file_path "$RUN/dump.txt" --output_dir "$RUN/wordpiece-uncased"

echo "== step 2: binarization -> $RUN/binarized_text.wordpiece-uncased.pickle"
$PY scripts/binarized_data.py --file_path "$RUN/dump.txt" --tokenizer_type bert \
    --tokenizer_name "$RUN/wordpiece-uncased" --dump_file "$RUN/binarized_text"

echo "== step 3: token counts -> $RUN/token_counts.wordpiece-uncased.pickle"
VOCAB=$($PY -c "import sys; sys.path.insert(0, '.'); import data_io
print(data_io.load_binarized('$RUN/binarized_text.wordpiece-uncased.pickle').meta['vocab_size'])")
$PY scripts/token_counts.py --data_file "$RUN/binarized_text.wordpiece-uncased.pickle" \
    --token_counts_dump "$RUN/token_counts.wordpiece-uncased.pickle" --vocab_size "$VOCAB"

echo "== done: $(ls "$RUN" | tr '\n' ' ')"
