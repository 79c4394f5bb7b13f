#!/usr/bin/env bash
# The GPU runs still owed after 2026-11-25 (that day's figures in BENCHMARKS.md came from scripts/gpu_final.sh,
# a one-call subset of these), one stage per argument:
#   bash scripts/gpu_acceptance.sh core      # GPU tests, tinyshakespeare char to <= 1.47, eval report, HellaSwag timing,
#                                            # triton-vs-sdpa loss curves
#   bash scripts/gpu_acceptance.sh bench     # bench.py: training baseline vs fast, attention, inference
#   bash scripts/gpu_acceptance.sh ddp       # 2 GPUs: torchrun DDP and FSDP2 vs 1 GPU, same global batch
# Needs (copied in by whoever runs it, since a GPU box has no ../shared): $DATA/input.txt (tinyshakespeare),
# $DATA/hellaswag_val.jsonl, $DATA/r50k_base.tiktoken. Logs and results go to $OUT (default ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-.gpu_data}
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GPT2_BPE_PATH="$DATA/r50k_base.tiktoken"
stamp() { echo "=== $(date -u +%H:%M:%S) $*"; }

stage_core() {
    stamp "environment"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

    stamp "GPU tests"
    python3 -m pytest tests/test_flash_attention.py tests/test_model.py -q -x -k "gpu or cuda" 2>&1 | tail -5

    stamp "prepare tinyshakespeare (char)"
    python3 prepare.py --input="$DATA/input.txt" --tokenizer=char --out_dir=data/tinyshakespeare_char 2>&1 | tail -3

    stamp "train_shakespeare_char"
    local start=$(date +%s.%N)
    python3 train.py config/train_shakespeare_char.py --max_iters=3000 2>&1 | grep -E "step [0-9]+:.*val|step (10|500|1000|2000|3000):|error" 
    echo "wall time including start-up: $(python3 -c "import time; print(round(time.time() - $start, 1))") s"
    python3 - <<'PY'
import json
records = [json.loads(l) for l in open("out-shakespeare-char/metrics.jsonl")]
evals = [r for r in records if r["type"] == "eval"]
best = min(evals, key=lambda r: r["val_loss"])
first = next((r for r in evals if r["val_loss"] <= 1.47), None)
print(f"best val {best['val_loss']:.4f} at step {best['step']} ({best['elapsed_s']:.0f} s into training)")
print("first eval <= 1.47:", first and f"step {first['step']}, val {first['val_loss']:.4f}, {first['elapsed_s']:.0f} s")
PY
    cp out-shakespeare-char/metrics.jsonl "$OUT/shakespeare_char_metrics.jsonl"

    stamp "eval report on the shakespeare model"
    python3 eval.py --model=out-shakespeare-char --tasks=loss --progress=False 2>&1 | tail -8
    cp out-shakespeare-char/loss_curves.png "$OUT/" 2>/dev/null; cp out-shakespeare-char/report.md "$OUT/" 2>/dev/null

    stamp "sample"
    python3 sample.py --model=out-shakespeare-char --num_samples=1 --max_new_tokens=300 --start="ROMEO:"

    stamp "HellaSwag, full val, random GPT-2 124M"
    python3 -c "
import torch; from model import GPT, GPTConfig
torch.manual_seed(0); GPT(GPTConfig()).export_hf('out-gpt2-random')"
    local t0=$(date +%s.%N)
    python3 eval.py --model=out-gpt2-random --tasks=hellaswag --hellaswag_path="$DATA/hellaswag_val.jsonl" \
        --progress=False --report_dir=out-gpt2-random 2>&1 | tail -6
    echo "hellaswag wall time including start-up: $(python3 -c "import time; print(round(time.time() - $t0, 1))") s"

    stamp "triton vs sdpa loss curves (dropout 0, same seed)"
    for attention in triton sdpa; do
        python3 train.py config/train_shakespeare_char.py --attention=$attention --dropout=0.0 --max_iters=300 \
            --eval_interval=100 --eval_iters=50 --log_interval=50 --compile=False --out_dir=out-curve-$attention 2>&1 \
            | grep -E "^step" | tail -9
    done
    python3 - <<'PY'
import json
curves = {}
for attention in ("triton", "sdpa"):
    records = [json.loads(l) for l in open(f"out-curve-{attention}/metrics.jsonl")]
    curves[attention] = {r["step"]: r["loss"] for r in records if r["type"] == "train"}
diffs = [abs(curves["triton"][s] - curves["sdpa"][s]) for s in curves["sdpa"]]
print(f"triton vs sdpa train loss over {len(diffs)} logged steps: max |diff| {max(diffs):.4f}, final "
      f"{curves['triton'][max(curves['triton'])]:.4f} vs {curves['sdpa'][max(curves['sdpa'])]:.4f}")
PY
}

stage_bench() {
    stamp "bench"
    python3 bench.py --mode=all --compare=True --ablate=True --batch_sizes=16,32,64 --json="$OUT/bench.json" 2>&1 | tail -60
}

stage_ddp() {
    stamp "environment"
    nvidia-smi --query-gpu=name,memory.total --format=csv
    python3 prepare.py --input="$DATA/input.txt" --tokenizer=char --out_dir=data/tinyshakespeare_char 2>&1 | tail -1
    local flags="config/train_shakespeare_char.py --max_iters=200 --eval_interval=100 --eval_iters=20 --log_interval=20 --dropout=0.0 --gradient_accumulation_steps=2"
    stamp "1 GPU"
    python3 train.py $flags --out_dir=out-ddp1 2>&1 | grep -E "^step"
    stamp "2 GPUs, torchrun DDP"
    torchrun --standalone --nproc_per_node=2 train.py $flags --out_dir=out-ddp2 2>&1 | grep -E "^step|error"
    stamp "2 GPUs, torchrun FSDP2"
    torchrun --standalone --nproc_per_node=2 train.py $flags --parallel=fsdp --out_dir=out-fsdp2 2>&1 | grep -E "^step|error"
}

for stage in "$@"; do "stage_$stage" 2>&1 | tee "$OUT/$stage.log"; done
