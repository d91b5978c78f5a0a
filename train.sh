#!/usr/bin/env bash
# The reference run: distil bert-base-uncased into the 4-layer DistilBERT_small on one 24 GB GPU
# (STUDENT=base: the 6-layer DistilBERT). Extra arguments go to train.py and win over the ones below.
#
#   bash train.sh                          # 4-layer student -> serialization_dir/distilbert-small-uncased
#   STUDENT=base bash train.sh             # 6-layer student -> serialization_dir/distilbert-base-uncased
#   bash train.sh --resume                 # continue a killed run from its checkpoint
#   bash train.sh --force --n_epoch 1      # overwrite the run folder, one epoch
#   NPROC=8 bash train.sh                  # 8 GPUs on this node (torchrun)
#   OBJECTIVE=minilm bash train.sh         # the MiniLM objective instead of DistilBERT's (see below)
#
# Reads $DATA_DIR/binarized_text.<teacher>.pickle and token_counts.<teacher>.pickle (steps 2-3 of the
# recipe). If the student's initial weights are missing, builds them first with
# scripts/extract/distilbert.py (teacher layers 0,4,7,11 or 0,2,4,7,9,11).
# OBJECTIVE is train.py's --objective, the loss weights of a published recipe (their table: OBJECTIVES in
# train_args.py); the run folder gets its name:
#   distilbert  KD 5 + MLM 2 + cosine 1 (Sanh et al. 2019), the default;
#   minilm      KL of the last layer's attention distributions + value relation, 1 each (Wang et al. 2020);
#   minilmv2    Q-Q, K-K and V-V relations of the last layer with 48 relation heads, 1 each (Wang et al. 2021).
# Other knobs: TEACHER (hub name or folder), DATA_DIR, DUMP_PATH, INIT, STUDENT_CONFIG, PYTHON.
set -euo pipefail
cd "$(dirname "$0")"

STUDENT=${STUDENT:-small}
case "$STUDENT" in
  small|base) ;;
  *) echo "train.sh: STUDENT must be 'small' (4 layers) or 'base' (6 layers), not '$STUDENT'" >&2; exit 2 ;;
esac
OBJECTIVE=${OBJECTIVE:-distilbert}
case "$OBJECTIVE" in  # checked here too, before the initial weights are built
  distilbert) SUFFIX= ;;
  minilm|minilmv2) SUFFIX=-$OBJECTIVE ;;
  *) echo "train.sh: OBJECTIVE must be distilbert, minilm or minilmv2, not '$OBJECTIVE'" >&2; exit 2 ;;
esac
TEACHER=${TEACHER:-bert-base-uncased}
TEACHER_NAME=$(basename "$TEACHER")
DATA_DIR=${DATA_DIR:-data}
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-1}
STUDENT_CONFIG=${STUDENT_CONFIG:-training_configs/distilbert-$STUDENT-uncased.json}
INIT=${INIT:-serialization_dir/$(basename "$STUDENT_CONFIG" .json).from-$TEACHER_NAME.safetensors}
DUMP_PATH=${DUMP_PATH:-serialization_dir/distilbert-$STUDENT-uncased$SUFFIX}

if [ ! -f "$INIT" ]; then
  "$PYTHON" scripts/extract/distilbert.py --model_name "$TEACHER" --student_config "$STUDENT_CONFIG" \
    --dump_checkpoint "$INIT"
fi

# Fewer fragmented blocks: the reference run fought memory creep with variable-length batches.
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
launcher=("$PYTHON")
if [ "$NPROC" -gt 1 ]; then
  launcher=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")
fi

exec "${launcher[@]}" train.py \
  --dump_path "$DUMP_PATH" \
  --data_file "$DATA_DIR/binarized_text.$TEACHER_NAME.pickle" \
  --token_counts "$DATA_DIR/token_counts.$TEACHER_NAME.pickle" \
  --student_type distilbert \
  --student_config "$STUDENT_CONFIG" \
  --student_pretrained_weights "$INIT" \
  --teacher_type bert \
  --teacher_name "$TEACHER" \
  --mlm --objective "$OBJECTIVE" \
  --fp16 \
  --batch_size 32 \
  "$@"
