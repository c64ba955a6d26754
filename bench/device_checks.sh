#!/usr/bin/env bash
# The open GPU checks of issues 5 and 6 in one device call (about 8 minutes on an H100/H200):
#   1. the CUDA tests (bf16 step, CUDA-vs-CPU forward, nvJPEG decode of shard JPEGs);
#   2. pretraining's data path at batch 512 bf16: decode in the loader workers vs on the GPU (pretrain.decode);
#   3. the fine-tuning step at batch 512 bf16, eager and compiled (finetune.compile), against facenet-pytorch.
# Run from the repository root on the device machine, carrying facenet-pytorch's package folder, e.g. with the
# device tool: carry [".venv/lib/python3.11/site-packages/facenet_pytorch"], command
#   bash bench/device_checks.sh "$(git rev-parse --short HEAD)"      (pass the commit: the copy has no .git)
# JSON goes to $OUT (the device tool's folder that comes back) or reports/bench; record the rows in
# reports/benchmarks.md with date, machine and commit.
set -u
commit=${1:-unknown}
out=${OUT:-reports/bench}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
facenet=.venv/lib/python3.11/site-packages
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'

echo "== CUDA tests"
CUDA_VISIBLE_DEVICES=0 timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_training_cuda.py 2>&1 | tail -4

echo "== pretraining data path: decode=worker vs decode=device"
timeout 200 python3 -m bench.pretrain --device cuda --batch-sizes 512 --precisions bf16 --depths reduced \
    --workers 4,6 --decode worker,device --steps 10 --warmup 3 --max-seconds 170 --commit "$commit" \
    --out "$out/pretrain-cuda-decode.json" 2>&1 | tail -22

echo "== fine-tuning step: eager and compiled, vs facenet-pytorch"
timeout 280 python3 -m bench.train --device cuda --batch-sizes 512 --precisions bf16 --depths reduced \
    --methods dynamic --compile --facenet-path "$facenet" --peak-tflops 989 --max-seconds 250 \
    --commit "$commit" --out "$out/train-cuda-compile.json" 2>&1 | tail -16
