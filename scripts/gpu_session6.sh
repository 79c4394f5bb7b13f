#!/usr/bin/env bash
# The sixth session's GPU calls (BENCHMARKS.md, "Sixth session"), one stage per argument, e.g.
#   bash scripts/gpu_session6.sh dtests inference_hf
# Logs go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/env.log"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/env.log"
for stage in "$@"; do
  case $stage in
    # the decoding tests: flash_decode against float64, CUDA-graph decoding (with a reused Decoder) against eager
    dtests) timeout 240 python3 -m pytest tests/test_flash_attention.py tests/test_model.py -q -x -k "decode or cuda_graph or decoder" > "$OUT/dtests.log" 2>&1; tail -4 "$OUT/dtests.log" ;;
    mtests) timeout 240 python3 -m pytest tests/test_model.py -q > "$OUT/mtests.log" 2>&1; tail -4 "$OUT/mtests.log" ;;
    inference) timeout 300 python3 bench.py --mode=inference --transformers_compare=False --json="$OUT/inference.json" > "$OUT/inference.log" 2>&1; tail -14 "$OUT/inference.log" ;;
    inference_hf) timeout 420 python3 bench.py --mode=inference --json="$OUT/inference_hf.json" > "$OUT/inference_hf.log" 2>&1; tail -24 "$OUT/inference_hf.log" ;;
    train) timeout 420 python3 bench.py --mode=train --compare=True --batch_sizes=64,128 --json="$OUT/train.json" > "$OUT/train.log" 2>&1; tail -16 "$OUT/train.log" ;;
  esac
done
