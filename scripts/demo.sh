#!/usr/bin/env bash
# The whole recipe, offline, on CPU, on a corpus the project generates itself; every step is the real script.
#
#   bash scripts/demo.sh [RUN_DIR]          # default RUN_DIR: demo_run/
#
# Numbered as the recipe's steps (README and docs/recipe.md); "demo" marks what only the demo needs.
# demo: synthetic Wikipedia-schema articles -> 1. extraction -> demo: a tokenizer (bert-base-uncased's when
# it is on disk, else WordPiece trained on the dump) -> 2-3. binarization with a held-out split, token
# counts -> 4. configs -> demo: a small BERT teacher trained as a plain MLM -> 5. a student with half its
# layers, initialised from them -> 6. the student distilled (KD + MLM + cosine), and the same student from
# the same init for the same steps trained without the teacher (MLM only), and trained on the teacher's
# last-layer attention and value relations only (MiniLM) -> 7. the three evaluated with the
# teacher on the held-out split (table + evaluation.json), a PNG of their curves, and a few fill-mask
# predictions. With DEMO_GLUE_DIR (a folder holding GLUE's SST-2, e.g. ../shared/data/glue), 8. the teacher
# and the three students fine-tuned on a slice of real SST-2, DEMO_GLUE_SEEDS seeds each, and scored on its
# dev set.
#
# Every file lands in RUN_DIR, so each script can be rerun by hand on it. Rerunning is safe: the steps are
# redone, except the teacher (the longest step), which is kept when its data and settings are unchanged.
# Sizes: SIZES in scripts/demo_plan.py, each overridden by DEMO_<NAME> (DEMO_ARTICLES, DEMO_TEACHER_EPOCHS, ...;
# the test suite runs a small demo). It starts with an estimate of each stage's time on this CPU (DEMO_ESTIMATE=0 skips it) and ends
# with the time each stage took.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-demo_run}
PY=${PYTHON:-python}
# ARTICLES, PEOPLE, TEACHER_EPOCHS, STUDENT_EPOCHS, VALID, TEACHER_EVAL_EVERY, STUDENT_EVAL_EVERY, GLUE_TRAIN,
# GLUE_SEEDS: their defaults and reasons are SIZES in scripts/demo_plan.py, and DEMO_<NAME> overrides one
SIZES=$($PY scripts/demo_plan.py sizes) || exit 2
eval "$SIZES"
# bf16 where it measures faster here (an AMX Xeon), fp32 elsewhere: ~5 s; DEMO_PRECISION=fp32|bf16 skips the timing.
case ${DEMO_PRECISION:-auto} in
    auto) PRECISION=$($PY scripts/demo_plan.py precision) || exit 2 ;;
    bf16) PRECISION=--bf16 ;;
    fp32) PRECISION= ;;
    *) echo "demo.sh: error: DEMO_PRECISION=$DEMO_PRECISION: give auto, fp32 or bf16" >&2; exit 2 ;;
esac
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}     # never wait on an unreachable model hub
mkdir -p "$RUN"
SECONDS=0
say() { printf '\n== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }
# Time per stage, printed at the end under the plan's estimates.
STAGES=(); STAGE_START=0; STAGE_NAME=
stage() {
    [[ -n $STAGE_NAME ]] && STAGES+=("$(printf '  %-44s %dm%02ds' "$STAGE_NAME" $(((SECONDS - STAGE_START) / 60)) $(((SECONDS - STAGE_START) % 60)))")
    STAGE_NAME=$1; STAGE_START=$SECONDS
}

if [[ ${DEMO_ESTIMATE:-1} != 0 ]]; then  # ~10 s; the test suite's small demo skips it (tested on its own)
    echo "The demo: the whole recipe on a generated corpus, offline, on this CPU. Estimated from a few timed steps:"
    $PY scripts/demo_plan.py estimate $PRECISION
fi
stage "data: corpus, extraction, tokenizer, counts"

say "demo: corpus, $ARTICLES synthetic articles (title, text) about $PEOPLE people and 72 cities -> $RUN/synthetic_wiki.jsonl"
$PY scripts/make_synthetic_wiki.py --num_articles "$ARTICLES" --people "$PEOPLE" --output "$RUN/synthetic_wiki.jsonl"

say "step 1: extraction, sentences of an article packed into lines of up to 48 words -> $RUN/dump.txt"
$PY scripts/extract_wikipedia.py --source "$RUN/synthetic_wiki.jsonl" --num_articles "$ARTICLES" \
    --pack_words 48 --output "$RUN/dump.txt"

if $PY -c "import sys; from transformers import BertTokenizer
sys.exit(len(BertTokenizer.from_pretrained('bert-base-uncased', local_files_only=True)) <= 1000)" 2>/dev/null; then
    TOKENIZER=bert-base-uncased
    say "demo: tokenizer: bert-base-uncased, found on disk"
else  # transformers 5 returns a 5-token tokenizer, rather than an error, when it finds no files
    TOKENIZER=$RUN/wordpiece-uncased
    # WordPiece training is not deterministic (ties in its merges): keep the vocabulary of an unchanged dump,
    # so that the data, and with them the cached teacher, stay valid on a rerun
    DUMP_SUM=$(cksum < "$RUN/dump.txt")
    if [[ -f $TOKENIZER/vocab.txt && -f $RUN/wordpiece.stamp && $(cat "$RUN/wordpiece.stamp") == "$DUMP_SUM" ]]; then
        say "demo: tokenizer: bert-base-uncased is not on disk; kept $TOKENIZER (trained on this same dump)"
    else
        say "demo: tokenizer: bert-base-uncased is not on disk; WordPiece trained on the dump -> $TOKENIZER"
        $PY scripts/train_wordpiece.py --file_path "$RUN/dump.txt" --output_dir "$TOKENIZER"
        echo "$DUMP_SUM" > "$RUN/wordpiece.stamp"
    fi
fi
NAME=$(basename "$TOKENIZER")
DATA=$RUN/binarized_text.$NAME.pickle
HELD_OUT=$RUN/binarized_text.$NAME.valid.pickle
COUNTS=$RUN/token_counts.$NAME.pickle

say "step 2: binarization, $VALID sequences held out -> $DATA, $HELD_OUT"
$PY scripts/binarized_data.py --file_path "$RUN/dump.txt" --tokenizer_type bert --tokenizer_name "$TOKENIZER" \
    --dump_file "$RUN/binarized_text" --valid_size "$VALID"

say "step 3: token counts -> $COUNTS"
VOCAB=$($PY -c "import sys; sys.path.insert(0, '.'); from training import data_format
print(data_format.load_binarized('$DATA').meta['vocab_size'])")
$PY scripts/token_counts.py --data_file "$DATA" --token_counts_dump "$COUNTS" --vocab_size "$VOCAB"

say "step 4: configs: a 4-layer BERT teacher and a 2-layer DistilBERT student (dim 256) -> $RUN/*_config.json"
$PY scripts/demo_plan.py configs "$RUN" "$VOCAB"

COMMON=(--data_file "$DATA" --valid_file "$HELD_OUT" --token_counts "$COUNTS" --teacher_type bert
        --batch_size 32 --gradient_accumulation_steps 1 --num_workers 0 --n_gpu 0 --checkpoint_interval 100000
        $PRECISION)
# What the teacher depends on (not the binarized file's bytes: its metadata records how long binarizing took)
VOCAB_SUM=$([[ -f $TOKENIZER/vocab.txt ]] && cksum < "$TOKENIZER/vocab.txt" || echo "$TOKENIZER")
STAMP="dump $(cksum < "$RUN/dump.txt") vocab $VOCAB_SUM valid=$VALID epochs=$TEACHER_EPOCHS precision=${PRECISION:-fp32} $(cksum < "$RUN/teacher_config.json")"
stage "teacher"
if [[ -f $RUN/teacher/model.safetensors && -f $RUN/teacher.stamp && $(cat "$RUN/teacher.stamp") == "$STAMP" ]]; then
    say "demo: teacher: kept $RUN/teacher (same data and settings; delete it to retrain)"
else
    say "demo: teacher: the 4-layer BERT trained as a plain MLM for $TEACHER_EPOCHS epochs -> $RUN/teacher"
    rm -f "$RUN/teacher.stamp"
    $PY train.py --force --dump_path "$RUN/teacher" "${COMMON[@]}" --student_type bert \
        --student_config "$RUN/teacher_config.json" --teacher_name none --tokenizer_name "$TOKENIZER" \
        --objective mlm --learning_rate 1e-3 --n_epoch "$TEACHER_EPOCHS" \
        --log_interval 50 --eval_interval "$TEACHER_EVAL_EVERY" 2>&1 | grep --line-buffered -E "eval iter|error|Error" || true
    [[ -f $RUN/teacher/model.safetensors ]] || { echo "teacher training failed: see $RUN/teacher/train.log"; exit 1; }
    echo "$STAMP" > "$RUN/teacher.stamp"
fi

stage "student init from teacher layers"
say "step 5: student init: teacher layers 0 and 3 -> $RUN/student_init.safetensors"
$PY scripts/extract/distilbert.py --model_name "$RUN/teacher" --student_config "$RUN/student_config.json" \
    --dump_checkpoint "$RUN/student_init.safetensors"

STUDENT=("${COMMON[@]}" --student_type distilbert --student_config "$RUN/student_config.json"
         --student_pretrained_weights "$RUN/student_init.safetensors" --learning_rate 1e-3
         --n_epoch "$STUDENT_EPOCHS" --log_interval 10 --eval_interval "$STUDENT_EVAL_EVERY")
stage "distilled student"
say "step 6: distillation (KD + MLM + cosine, the recipe's losses) for $STUDENT_EPOCHS epoch(s) -> $RUN/student_distilled"
$PY train.py --force --dump_path "$RUN/student_distilled" "${STUDENT[@]}" --teacher_name "$RUN/teacher" \
    2>&1 | grep --line-buffered -E "eval iter|error|Error" || true
stage "MLM-only student"
say "step 6, the baseline: the same student, same init and steps, without the teacher (MLM only) -> $RUN/student_mlm_only"
$PY train.py --force --dump_path "$RUN/student_mlm_only" "${STUDENT[@]}" --teacher_name none \
    --tokenizer_name "$TOKENIZER" --objective mlm \
    2>&1 | grep --line-buffered -E "eval iter|error|Error" || true
stage "MiniLM student"
say "step 6, MiniLM: the same student, same init and steps, learning the teacher's last-layer attention and value relations -> $RUN/student_minilm"
$PY train.py --force --dump_path "$RUN/student_minilm" "${STUDENT[@]}" --teacher_name "$RUN/teacher" \
    --objective minilm \
    2>&1 | grep --line-buffered -E "eval iter|error|Error" || true
for s in student_distilled student_mlm_only student_minilm; do
    [[ -f $RUN/$s/model.safetensors ]] || { echo "$s training failed: see $RUN/$s/train.log"; exit 1; }
done

stage "evaluation, plot, fill-mask"
say "step 7: evaluation on the $VALID held-out sequences (same masked positions for every model)"
# fill-mask needs nothing from the evaluation: it runs beside it, on the other core (mostly process start)
OMP_NUM_THREADS=1 $PY scripts/fill_mask.py --model "teacher=$RUN/teacher" --model "distilled=$RUN/student_distilled" \
    --model "mlm_only=$RUN/student_mlm_only" --model "minilm=$RUN/student_minilm" --data_file "$HELD_OUT" \
    --token_counts "$COUNTS" --num_sentences 4 \
    > "$RUN/fill_mask.txt" 2>&1 &
FILL_MASK=$!
$PY scripts/evaluate.py --teacher "teacher=$RUN/teacher" --model "distilled=$RUN/student_distilled" \
    --model "mlm_only=$RUN/student_mlm_only" --model "minilm=$RUN/student_minilm" --data_file "$HELD_OUT" \
    --token_counts "$COUNTS" --n_gpu 0 --output "$RUN/evaluation.json" 2> "$RUN/evaluate.log" || { cat "$RUN/evaluate.log"; exit 1; }
$PY scripts/plot_demo.py --run "distilled=$RUN/student_distilled" --run "mlm_only=$RUN/student_mlm_only" \
    --run "minilm=$RUN/student_minilm" \
    --evaluation "$RUN/evaluation.json" --output "$RUN/students.png"
wait "$FILL_MASK" || { cat "$RUN/fill_mask.txt"; echo "fill_mask.py failed"; exit 1; }
echo
cat "$RUN/fill_mask.txt"

$PY - "$RUN/evaluation.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))["models"]
gap = 100 * (m["distilled"]["top1"] - m["mlm_only"]["top1"])
verdict = "beats" if gap > 0 else "does NOT beat"
print(f"\nthe distilled student {verdict} the undistilled one on held-out top-1: {gap:+.2f} points "
      f"({100 * m['distilled']['top1']:.2f}% vs {100 * m['mlm_only']['top1']:.2f}%; teacher {100 * m['teacher']['top1']:.2f}%)")
print(f"the MiniLM student (no MLM loss: its vocabulary head is the initial one) reaches "
      f"{100 * m['minilm']['top1']:.2f}% held-out top-1; SST-2 (DEMO_GLUE_DIR) is its fair test")
EOF

if [[ -n ${DEMO_GLUE_DIR:-} ]]; then
    stage "SST-2 fine-tuning"
    say "step 8: SST-2: the teacher and the three students fine-tuned on $GLUE_TRAIN real sentences, $GLUE_SEEDS seeds each -> $RUN/glue/"
    mkdir -p "$RUN/glue"
    for m in teacher student_distilled student_mlm_only student_minilm; do
        # lr 3e-4: these small models barely move at BERT's 2e-5 in one epoch, and diverge at 1e-3
        $PY scripts/run_glue.py --model_name_or_path "$RUN/$m" --task_name sst2 --data_dir "$DEMO_GLUE_DIR" \
            --output_dir "$RUN/glue/$m" --max_train_samples "$GLUE_TRAIN" --num_train_epochs 1 --learning_rate 3e-4 \
            --seeds "$GLUE_SEEDS" --save_strategy no --disable_tqdm true --overwrite_output_dir > "$RUN/glue/$m.log" 2>&1 \
            || { tail -5 "$RUN/glue/$m.log"; exit 1; }
        grep -E "word pieces|accuracy" "$RUN/glue/$m.log"
    done
    $PY scripts/glue_table.py "$RUN/glue/teacher" "$RUN/glue/student_distilled" "$RUN/glue/student_mlm_only" \
        "$RUN/glue/student_minilm" \
        --output "$RUN/glue.md"
fi

stage ""
echo; echo "time per stage on this CPU:"; printf '%s\n' "${STAGES[@]}"
say "done in ${SECONDS}s: $RUN/evaluation.json, $RUN/students.png${DEMO_GLUE_DIR:+, $RUN/glue.md}; run folders $RUN/teacher, $RUN/student_*"
