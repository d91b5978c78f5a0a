#!/usr/bin/env bash
# The reference run: distil bert-base-uncased into the 4-layer DistilBERT_small on one 24 GB GPU
# (STUDENT=base: the 6-layer DistilBERT). Extra arguments go to train.py and win over the ones below.
#
#   bash train.sh                          # 4-layer student -> serialization_dir/distilbert-small-uncased
#   STUDENT=base bash train.sh             # 6-layer student -> serialization_dir/distilbert-base-uncased
#   STUDENT=cased bash train.sh            # distilbert-base-cased from bert-base-cased
#   STUDENT=multilingual bash train.sh     # distilbert-base-multilingual-cased from bert-base-multilingual-cased
#   STUDENT=roberta bash train.sh          # distilroberta-base from roberta-base (MLM)
#   STUDENT=gpt2 bash train.sh             # distilgpt2 from gpt2 (causal LM: KD + CLM + cosine, no token counts)
#   bash train.sh --resume                 # continue a killed run from its checkpoint
#   bash train.sh --force --n_epoch 1      # overwrite the run folder, one epoch
#   NPROC=8 bash train.sh                  # 8 GPUs on this node (torchrun)
#   OBJECTIVE=minilm bash train.sh         # the MiniLM objective instead of DistilBERT's (see below)
#
# Reads $DATA_DIR/binarized_text.<teacher>.pickle and token_counts.<teacher>.pickle (steps 2-3 of the
# recipe, binarized with the teacher's tokenizer: --tokenizer_type roberta / gpt2 for those students). If the
# student's initial weights are missing, builds them first with scripts/extract/distilbert.py (teacher layers
# 0,4,7,11 or 0,2,4,7,9,11), or scripts/extract/student.py for RoBERTa and GPT-2 (0,2,4,7,9,11).
# OBJECTIVE is train.py's --objective, the loss weights of a published recipe (their table: OBJECTIVES in
# train_args.py); the run folder gets its name:
#   distilbert  KD 5 + MLM 2 + cosine 1 (Sanh et al. 2019), the default;
#   minilm      KL of the last layer's attention distributions + value relation, 1 each (Wang et al. 2020);
#   minilmv2    Q-Q, K-K and V-V relations of the last layer with 48 relation heads, 1 each (Wang et al. 2021).
# Other knobs: TEACHER (hub name or folder), DATA_DIR, DUMP_PATH, INIT, STUDENT_CONFIG, PYTHON.
set -euo pipefail
cd "$(dirname "$0")"

STUDENT=${STUDENT:-small}
# Per student: its config, the teacher, the two model types, the LM objective, how its init is extracted.
KIND=(--student_type distilbert --teacher_type bert --mlm)
EXTRACT=(scripts/extract/distilbert.py)
case "$STUDENT" in
  small|base) CONFIG_NAME=distilbert-$STUDENT-uncased; DEFAULT_TEACHER=bert-base-uncased ;;
  cased) CONFIG_NAME=distilbert-base-cased; DEFAULT_TEACHER=bert-base-cased ;;
  multilingual) CONFIG_NAME=distilbert-base-multilingual-cased; DEFAULT_TEACHER=bert-base-multilingual-cased ;;
  roberta) CONFIG_NAME=distilroberta-base; DEFAULT_TEACHER=roberta-base
           KIND=(--student_type roberta --teacher_type roberta --mlm); EXTRACT=(scripts/extract/student.py --model_type roberta) ;;
  gpt2) CONFIG_NAME=distilgpt2; DEFAULT_TEACHER=gpt2
        KIND=(--student_type gpt2 --teacher_type gpt2); EXTRACT=(scripts/extract/student.py --model_type gpt2) ;;
  *) echo "train.sh: STUDENT must be small (4 layers), base (6 layers), cased, multilingual, roberta or gpt2, not '$STUDENT'" >&2
     exit 2 ;;
esac
OBJECTIVE=${OBJECTIVE:-distilbert}
case "$OBJECTIVE" in  # checked here too, before the initial weights are built
  distilbert) SUFFIX= ;;
  minilm|minilmv2) SUFFIX=-$OBJECTIVE ;;
  *) echo "train.sh: OBJECTIVE must be distilbert, minilm or minilmv2, not '$OBJECTIVE'" >&2; exit 2 ;;
esac
TEACHER=${TEACHER:-$DEFAULT_TEACHER}
TEACHER_NAME=$(basename "$TEACHER")
DATA_DIR=${DATA_DIR:-data}
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-1}
STUDENT_CONFIG=${STUDENT_CONFIG:-training_configs/$CONFIG_NAME.json}
INIT=${INIT:-serialization_dir/$(basename "$STUDENT_CONFIG" .json).from-$TEACHER_NAME.safetensors}
DUMP_PATH=${DUMP_PATH:-serialization_dir/$CONFIG_NAME$SUFFIX}

if [ ! -f "$INIT" ]; then
  "$PYTHON" "${EXTRACT[@]}" --model_name "$TEACHER" --student_config "$STUDENT_CONFIG" --dump_checkpoint "$INIT"
fi

# Fewer fragmented blocks: the reference run fought memory creep with variable-length batches.
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
launcher=("$PYTHON")
if [ "$NPROC" -gt 1 ]; then
  launcher=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")
fi

COUNTS=(--token_counts "$DATA_DIR/token_counts.$TEACHER_NAME.pickle")  # the MLM's masking weights
[[ $STUDENT == gpt2 ]] && COUNTS=()  # a causal LM masks nothing
exec "${launcher[@]}" train.py \
  --dump_path "$DUMP_PATH" \
  --data_file "$DATA_DIR/binarized_text.$TEACHER_NAME.pickle" \
  "${COUNTS[@]}" \
  "${KIND[@]}" \
  --student_config "$STUDENT_CONFIG" \
  --student_pretrained_weights "$INIT" \
  --teacher_name "$TEACHER" \
  --objective "$OBJECTIVE" \
  --fp16 \
  --batch_size 32 \
  "$@"
