#!/usr/bin/env bash
# The seventh session's GPU calls (BENCHMARKS.md, "Seventh session"), one stage per argument, e.g.
#   bash scripts/gpu_session7.sh dtests abdecode
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
    fatests) timeout 240 python3 -m pytest tests/test_flash_attention.py -q > "$OUT/fatests.log" 2>&1; tail -4 "$OUT/fatests.log" ;;
    # A/B of decoding, interleaved: ab/old (an export of the sixth session's last commit, 5a4b11e) and this tree,
    # timed by scripts/decode_ab.py; ab/ is git-ignored, so the device call carries it
    abdecode) for round in 1 2; do
          for tree in ab/old .; do
            timeout 120 python3 scripts/decode_ab.py "$tree" 2>&1 | grep -E "ms/step|Error|error" | tee -a "$OUT/abdecode.log"
          done
        done ;;
    inference) timeout 300 python3 bench.py --mode=inference --transformers_compare=False --json="$OUT/inference.json" > "$OUT/inference.log" 2>&1; tail -14 "$OUT/inference.log" ;;
    inference_hf) timeout 420 python3 bench.py --mode=inference --json="$OUT/inference_hf.json" > "$OUT/inference_hf.log" 2>&1; tail -24 "$OUT/inference_hf.log" ;;
    profile) for args in "--batch=16" "--batch=1"; do echo "== $args"; timeout 200 python3 scripts/decode_profile.py --steps=50 $args > "$OUT/profile.log" 2>&1; grep -A24 "wall time per step" "$OUT/profile.log"; done ;;
    train) timeout 420 python3 bench.py --mode=train --compare=True --batch_sizes=64,128 --json="$OUT/train.json" > "$OUT/train.log" 2>&1; tail -16 "$OUT/train.log" ;;
  esac
done
