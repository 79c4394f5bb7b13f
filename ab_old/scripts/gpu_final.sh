#!/usr/bin/env bash
# One call, in priority order (device time was short): tinyshakespeare char to <= 1.47, kernel GPU tests,
# attention micro-benchmark, training baseline vs fast. Every stage writes its log under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-.gpu_data}; OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GPT2_BPE_PATH="$DATA/r50k_base.tiktoken"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/env.log"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/env.log"
python3 prepare.py --input="$DATA/input.txt" --tokenizer=char --out_dir=data/tinyshakespeare_char > "$OUT/prepare.log" 2>&1
start=$(date +%s.%N)
timeout 170 python3 train.py config/train_shakespeare_char.py --max_iters=2500 --eval_interval=125 > "$OUT/shakespeare.log" 2>&1
echo "shakespeare exit $? wall $(python3 -c "import time; print(round(time.time() - $start, 1))") s" | tee -a "$OUT/shakespeare.log"
grep -E "val loss" "$OUT/shakespeare.log" | tail -25
cp out-shakespeare-char/metrics.jsonl "$OUT/shakespeare_metrics.jsonl"
timeout 30 python3 sample.py --model=out-shakespeare-char --num_samples=1 --max_new_tokens=250 --start="ROMEO:" > "$OUT/sample.log" 2>&1; cat "$OUT/sample.log"
timeout 100 python3 -m pytest tests/test_flash_attention.py -q -k gpu 2>&1 | tail -15 | tee "$OUT/kernel_tests.log"
timeout 60 python3 bench.py --mode=attention --json="$OUT/attention.json" > "$OUT/attention.log" 2>&1; tail -12 "$OUT/attention.log"
timeout 200 python3 bench.py --mode=train --compare=True --batch_sizes=32 --json="$OUT/train_compare.json" > "$OUT/train_compare.log" 2>&1; tail -15 "$OUT/train_compare.log"
