#!/usr/bin/env bash
# Third H100 session (2026-11-25), one stage per argument, in one device call each:
#   bash scripts/gpu_session3.sh a   # GPU tests (fp8, bucketed decode graphs), training baseline vs fast (with fp8),
#                                    # the fp8 lever alone with its profile
#   bash scripts/gpu_session3.sh b   # decoding with bucketed graphs, fp8-vs-bf16 loss curves, data-loader stall
#   bash scripts/gpu_session3.sh c   # fp8 on a wider model (24 layers, 2048 wide, ~1.3B): where its casts pay
#   bash scripts/gpu_session3.sh d   # after the fixes of a and b: GPU tests again, decoding with compiled buckets
# Needs .gpu_data/{input.txt,r50k_base.tiktoken} (carried in). Logs go to $OUT/logs, packed into $OUT/logs.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-.gpu_data}; OUT=${OUT:-gpu-out}; L="$OUT/logs"; mkdir -p "$L"
export PYTHONUNBUFFERED=1 GPT2_BPE_PATH="$DATA/r50k_base.tiktoken"
stamp() { echo "=== $(date -u +%H:%M:%S) $*"; }

stage_a() {
    stamp env; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    stamp tests
    timeout 150 python3 -m pytest -q tests/test_fp8.py tests/test_model.py 2>&1 | tail -6 | tee "$L/tests.log"
    fast_fp8=True; grep -q "failed" "$L/tests.log" && fast_fp8=False
    stamp "train compare (fast_fp8=$fast_fp8)"
    timeout 330 python3 bench.py --mode=train --compare=True --batch_sizes=64,128 --fast_fp8=$fast_fp8 \
        --json="$L/train_compare.json" > "$L/train_compare.log" 2>&1; tail -14 "$L/train_compare.log"
    stamp "fp8 lever alone (baseline settings + fp8), with profile"
    timeout 90 python3 bench.py --mode=train --attention=sdpa --fp8=True --batch_size=64 --profile=True \
        --json="$L/fp8_lever.json" > "$L/fp8_lever.log" 2>&1; tail -45 "$L/fp8_lever.log"
}

stage_b() {
    stamp "fp8 test on the GPU, in full"
    timeout 60 python3 -m pytest -q tests/test_fp8.py -k cuda 2>&1 | grep -E "^E |passed|failed" | head -20
    stamp "inference (bucketed decode graphs)"
    timeout 170 python3 bench.py --mode=inference --transformers_compare=False --json="$L/inference.json" \
        > "$L/inference.log" 2>&1; tail -14 "$L/inference.log"
    stamp "fp8 vs bf16 loss curves: train_shakespeare_char, same seed, 1000 steps"
    python3 prepare.py --input="$DATA/input.txt" --tokenizer=char --out_dir=data/tinyshakespeare_char > "$L/prepare.log" 2>&1
    for fp8 in False True; do
        timeout 120 python3 train.py config/train_shakespeare_char.py --fp8=$fp8 --max_iters=1000 --lr_decay_iters=1000 \
            --eval_interval=250 --eval_iters=100 --log_interval=50 --out_dir=out-fp8-$fp8 > "$L/curve_fp8_$fp8.log" 2>&1
        grep -E "val loss|error" "$L/curve_fp8_$fp8.log" | tail -6
        cp out-fp8-$fp8/metrics.jsonl "$L/curve_fp8_$fp8.jsonl"
    done
    python3 - "$L" <<'PY'
import json, sys
curves = {}
for fp8 in ("False", "True"):
    records = [json.loads(l) for l in open(f"{sys.argv[1]}/curve_fp8_{fp8}.jsonl")]
    curves[fp8] = ({r["step"]: r["loss"] for r in records if r["type"] == "train"},
                   {r["step"]: r["val_loss"] for r in records if r["type"] == "eval"})
train_diff = [abs(curves["True"][0][s] - curves["False"][0][s]) for s in curves["False"][0] if s in curves["True"][0]]
print(f"fp8 vs bf16 train loss over {len(train_diff)} logged steps: max |diff| {max(train_diff):.4f}")
for s in sorted(curves["False"][1]):
    print(f"step {s}: val bf16 {curves['False'][1][s]:.4f}  fp8 {curves['True'][1].get(s, float('nan')):.4f}")
PY
    stamp "data-loader stall: tinyshakespeare in GPT-2 tokens through train.py's loader, baseline at micro-batch 64"
    python3 prepare.py --input="$DATA/input.txt" --tokenizer=gpt2 --out_dir=data/tinyshakespeare_gpt2 >> "$L/prepare.log" 2>&1
    timeout 120 python3 bench.py --mode=train --attention=sdpa --batch_size=64 --data_dir=data/tinyshakespeare_gpt2 \
        --json="$L/loader.json" > "$L/loader.log" 2>&1; tail -6 "$L/loader.log"
}

stage_c() {
    local wide="--mode=train --attention=sdpa --n_layer=24 --n_head=16 --n_embd=2048 --batch_size=8 --timed_steps=10"
    for fp8 in False True; do
        stamp "wide model, fp8=$fp8"
        timeout 200 python3 bench.py $wide --fp8=$fp8 --json="$L/wide_fp8_$fp8.json" > "$L/wide_fp8_$fp8.log" 2>&1
        tail -4 "$L/wide_fp8_$fp8.log"
    done
}

stage_d() {
    stamp "GPU tests: fp8 (rows padded to 16), decode graphs"
    timeout 120 python3 -m pytest -q tests/test_fp8.py tests/test_model.py 2>&1 | grep -E "^E |passed|failed" | head -20
    stamp "inference"
    timeout 170 python3 bench.py --mode=inference --transformers_compare=False --json="$L/inference.json" \
        > "$L/inference.log" 2>&1; tail -12 "$L/inference.log"
}

for stage in "$@"; do "stage_$stage" 2>&1 | tee "$L/stage_$stage.log"; done
tar czf "$OUT/logs.tgz" -C "$OUT" logs
