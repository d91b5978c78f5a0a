#!/usr/bin/env bash
# The recipe on a CUDA machine, in one command that needs only a clean checkout (and benchmarks/wheels/ from
# benchmarks/gpu_wheels.sh: the GPU machine reaches no network). Writes every figure, log and a summary into
# $OUT (default gpu_check_out/): steps.jsonl (each step's exit status and seconds), summary.md, env.json,
# cuda_tests.xml, bench.json and one .log per step. Meant to finish in under 8 minutes on one H100.
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh
#   bash benchmarks/gpu_check.sh --dry-run    # on CPU: the same steps, small, the CUDA-only ones skipped
#
# Steps: packages (installed from benchmarks/wheels/; --dry-run checks that gpu_wheels.sh covers the
# requirements) -> the CUDA tests (pytest -m cuda) -> a generated corpus, a 30,522-id tokenizer and a
# random-weight bert-base teacher (benchmarks/gpu_setup.py; no hub) -> binarization, token counts -> train.sh
# (fp16, batch 32, expandable segments; a few hundred batches) -> the output loaded with
# AutoModelForMaskedLM and a fill-mask pipeline -> step 8: scripts/run_glue.py on SST-2 (fp16) -> task
# distillation from that fine-tuned model (run_glue.py --teacher_name_or_path, fp16) -> question answering
# (scripts/run_qa.py on cloze questions from the corpus, then QA distillation from the fine-tuned model) ->
# benchmarks/bench_train.py --device cuda --fp16 (ours,
# MiniLM's losses and upstream's step) -> benchmarks/bench_inference.py (the students' inference speed
# against their teachers, fp32/fp16/bf16, batch 1 and 128) -> the GPU, driver, torch and CUDA versions. A failing step is
# recorded and the next one runs; a step that needs a failed step's output is not run, and names that step.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ ${1:-} == --dry-run ]] && DRY=1
OUT=${OUT:-gpu_check_out}
PY=${PYTHON:-python3}
BENCH_STEPS=${BENCH_STEPS:-1000}
mkdir -p "$OUT"
: > "$OUT/steps.jsonl"
SUMMARY=$OUT/summary.md
echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M') UTC$([[ $DRY == 1 ]] && echo ', dry run on CPU')" > "$SUMMARY"
FAILED=0

declare -A RC  # each step's exit status, for the steps that need its output

step() {  # step NAME [--needs EARLIER]... COMMAND...: run it, log to $OUT/NAME.log, record its exit status and seconds
    local name=$1 start=$SECONDS rc dep missing=
    shift
    while [[ ${1:-} == --needs ]]; do  # a step that needs a failed step's output is not run, and says which
        dep=$2
        shift 2
        [[ ${RC[$dep]:-unset} == 0 ]] || missing=${missing:-$dep}
    done
    if [[ -n $missing ]]; then
        echo "not run: it needs the output of step '$missing', which failed (see $missing.log)" > "$OUT/$name.log"
        rc=125
    else
        "$@" > "$OUT/$name.log" 2>&1
        rc=$?
    fi
    RC[$name]=$rc
    printf '{"step": "%s", "rc": %d, "seconds": %d}\n' "$name" "$rc" $((SECONDS - start)) >> "$OUT/steps.jsonl"
    if [[ $rc == 0 ]]; then
        printf -- '- %s: ok, %d s (%s.log)\n' "$name" $((SECONDS - start)) "$name"
    elif [[ -n $missing ]]; then
        printf -- "- %s: FAILED, not run: step '%s' failed\n" "$name" "$missing"
    else
        printf -- '- %s: FAILED, exit %d, %d s (%s.log)\n' "$name" "$rc" $((SECONDS - start)) "$name"
    fi | tee -a "$SUMMARY"
    [[ $rc == 0 ]] || FAILED=$((FAILED + 1))
    return "$rc"
}

if [[ $DRY == 1 ]]; then
    step packages "$PY" benchmarks/gpu_wheels_check.py
    ARTICLES=300; SMALL=--small
else
    step packages "$PY" -m pip install --no-index --find-links benchmarks/wheels -r requirements-dev.txt
    ARTICLES=${GPU_CHECK_ARTICLES:-2000}; SMALL=
fi
step cuda_tests "$PY" -m pytest -q -m cuda -rs tests/test_cuda.py --junitxml "$OUT/cuda_tests.xml"

DATA=$OUT/data
step data "$PY" benchmarks/gpu_setup.py --out "$DATA" --articles "$ARTICLES" $SMALL
step binarize --needs data "$PY" scripts/binarized_data.py --file_path "$DATA/dump.txt" --tokenizer_type bert \
    --tokenizer_name "$DATA/bert-base-random" --dump_file "$DATA/binarized_text"
step token_counts --needs binarize "$PY" scripts/token_counts.py --data_file "$DATA/binarized_text.bert-base-random.pickle" \
    --token_counts_dump "$DATA/token_counts.bert-base-random.pickle" --vocab_size 30522
step train_sh --needs token_counts env TEACHER="$DATA/bert-base-random" DATA_DIR="$DATA" STUDENT_CONFIG="$DATA/student.json" \
    INIT="$OUT/init.safetensors" DUMP_PATH="$OUT/run" PYTHON="$PY" \
    bash train.sh --force --n_epoch 1 --log_interval 20 --gradient_accumulation_steps 1
tr '\r' '\n' < "$OUT/train_sh.log" | grep -E "iter [0-9]+ step" | tail -3 | sed 's/^.*INFO distillation: /    /' \
    | tee -a "$SUMMARY"
step load --needs train_sh "$PY" - "$OUT/run" <<'PYEOF'
import sys
import torch
from transformers import AutoModelForMaskedLM, pipeline

run = sys.argv[1]
model = AutoModelForMaskedLM.from_pretrained(run)
fill = pipeline("fill-mask", model=run, device=0 if torch.cuda.is_available() else -1)
print(type(model).__name__, sum(p.numel() for p in model.parameters()), "parameters")
print(fill("the city lies on the [MASK] river.")[:3])
PYEOF

# Step 8 on the GPU: the student fine-tuned on SST-2 (GLUE's real files where they are, else the generated ones)
GLUE_SST2=${GLUE_DIR:-../shared/data/glue}/SST-2
[[ -f $GLUE_SST2/dev.tsv ]] || GLUE_SST2=$DATA/glue/SST-2
echo "- SST-2 for step 8: $GLUE_SST2$([[ $GLUE_SST2 == "$DATA"/* ]] && echo ' (the generated stand-in)')" | tee -a "$SUMMARY"
if [[ $DRY == 1 ]]; then GLUE_SIZE=(--max_train_samples 300 --max_steps 6); else GLUE_SIZE=(--max_train_samples 20000 --fp16); fi
step glue --needs train_sh "$PY" scripts/run_glue.py --model_name_or_path "$OUT/run" --task_name sst2 --data_dir "$GLUE_SST2" \
    --output_dir "$OUT/glue" --num_train_epochs 1 --learning_rate 5e-5 --report_to none --save_strategy no \
    --disable_tqdm true --save_model "${GLUE_SIZE[@]}"
grep -E "accuracy|data|--fp16" "$OUT/glue.log" | sed 's/^/    /' | tee -a "$SUMMARY"
# Task distillation on the GPU: the same student distilled from its fine-tuned self, logit KD from
# the teacher's logits computed once (in fp16 where the step runs in fp16), over labelled and unlabelled rows
GLUE_TEACHER=$(ls -d "$OUT"/glue/sst2/lr*_seed42 2>/dev/null | head -1)/model
if [[ $DRY == 1 ]]; then KD_SIZE=(--unlabeled_samples 64); else KD_SIZE=(--unlabeled_samples 20000); fi
step task_distill --needs train_sh --needs glue "$PY" scripts/run_glue.py --model_name_or_path "$OUT/run" --teacher_name_or_path "$GLUE_TEACHER" \
    --alpha_ce 0.5 --alpha_task 0.5 --temperature 2 --task_name sst2 --data_dir "$GLUE_SST2" \
    --output_dir "$OUT/task_distill" --num_train_epochs 1 --learning_rate 5e-5 --report_to none --save_strategy no \
    --disable_tqdm true "${GLUE_SIZE[@]}" "${KD_SIZE[@]}"
grep -E "accuracy|teacher's logits" "$OUT/task_distill.log" | sed 's/^/    /' | tee -a "$SUMMARY"

# Question answering on the GPU: cloze questions from the corpus (scripts/make_qa_data.py), the
# student fine-tuned on them and saved, then distilled from that QA model (start/end logits cached, fp16)
step qa_data --needs data "$PY" scripts/make_qa_data.py --source "$DATA/dump.txt" --output_dir "$DATA/qa"
if [[ $DRY == 1 ]]; then QA_SIZE=(--max_seq_length 128 --doc_stride 32 --max_train_samples 120 --max_eval_samples 40 --max_steps 4)
else QA_SIZE=(--max_train_samples 4000 --num_train_epochs 1 --fp16); fi
QA=(--train_file "$DATA/qa/train-v1.1.json" --validation_file "$DATA/qa/dev-v1.1.json" --report_to none
    --save_strategy no --disable_tqdm true "${QA_SIZE[@]}")
step qa --needs train_sh --needs qa_data "$PY" scripts/run_qa.py --model_name_or_path "$OUT/run" "${QA[@]}" \
    --output_dir "$OUT/qa" --save_model
step qa_distill --needs qa "$PY" scripts/run_qa.py --model_name_or_path "$OUT/run" "${QA[@]}" --output_dir "$OUT/qa_distill" \
    --teacher_name_or_path "$(ls -d "$OUT"/qa/squad/lr*_seed42 2>/dev/null | head -1)/model" --teacher_logits_cache off
grep -hE "exact_match|start/end logits" "$OUT/qa.log" "$OUT/qa_distill.log" | sed 's/^/    /' | tee -a "$SUMMARY"

if [[ $DRY == 1 ]]; then
    echo "- bench: skipped (needs CUDA)" | tee -a "$SUMMARY"
else
    step bench "$PY" benchmarks/bench_train.py --device cuda --fp16 --steps "$BENCH_STEPS" --json "$OUT/bench.json"
    sed -n '/^| step/,$p' "$OUT/bench.log" >> "$SUMMARY"
fi

# The students' inference speed against their teachers (benchmarks/bench_inference.py): batch 1 and 128 in
# fp32, fp16 and bf16 on the GPU; the dry run times the tiny shapes on the CPU (eager and ONNX).
if [[ $DRY == 1 ]]; then
    INFER=(--device cpu --models tiny-teacher,tiny-student --runtimes eager,onnx --threads 1 --batch 16
           --throughput_rows 32 --latency_runs 4 --rounds 1)
else
    INFER=(--device cuda --runtimes eager,fp16,bf16 --threads 1 --batch 128 --throughput_rows 2048 --rounds 3)
fi
step inference "$PY" benchmarks/bench_inference.py "${INFER[@]}" --output "$OUT/inference.json"
sed -n '/^| model/,$p' "$OUT/inference.log" >> "$SUMMARY"

step env "$PY" - "$OUT/env.json" <<'PYEOF'
import json
import subprocess
import sys

import torch
import transformers

env = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
       "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
try:
    env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=30).stdout.strip()
except OSError:
    env["driver"] = None
json.dump(env, open(sys.argv[1], "w"), indent=2)
print(json.dumps(env))
PYEOF
cat "$OUT/env.log" >> "$SUMMARY"
echo "$FAILED step(s) failed; everything is in $OUT" | tee -a "$SUMMARY"
exit $((FAILED > 0))
