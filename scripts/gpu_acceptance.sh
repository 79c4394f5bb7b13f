#!/usr/bin/env bash
# The GPU runs still owed after 2026-11-25 (that day's figures in BENCHMARKS.md came from scripts/gpu_final.sh,
# a one-call subset of these), one stage per argument:
#   bash scripts/gpu_acceptance.sh core      # GPU tests, tinyshakespeare char to <= 1.47, eval report, HellaSwag timing,
#                                            # triton-vs-sdpa loss curves
#   bash scripts/gpu_acceptance.sh bench     # bench.py: training baseline vs fast, attention, inference
#   bash scripts/gpu_acceptance.sh ddp       # 2 GPUs: torchrun DDP and FSDP2 vs 1 GPU, same global batch
#   bash scripts/gpu_acceptance.sh scaling   # GPT-2 124M on 1, 2 and all GPUs (DDP; FSDP2 on all): tokens/s per GPU
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
    python3 -m pytest tests/test_cross_entropy_kernel.py tests/test_fp8.py -q -x 2>&1 | tail -5

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

stage_scaling() {
    # GPT-2 124M (config/train_gpt2.py) on 1, 2 and all GPUs with the same global batch (0.5M tokens a step), so
    # tokens/s per GPU against one GPU is the scaling efficiency and the loss curves should agree up to noise.
    # tinyshakespeare in GPT-2 tokens stands in for a large corpus: the speed does not depend on the text.
    local n_gpus=$(nvidia-smi -L | wc -l)
    stamp "environment: $n_gpus GPUs"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nvidia-smi topo -m
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    python3 prepare.py --input="$DATA/input.txt" --tokenizer=gpt2 --out_dir=data/tinyshakespeare_gpt2 2>&1 | tail -1
    local flags="config/train_gpt2.py --data_dir=data/tinyshakespeare_gpt2 --max_iters=${SCALING_STEPS:-40}
        --eval_interval=${SCALING_STEPS:-40} --eval_iters=10 --log_interval=5 --warmup_iters=5
        --lr_decay_iters=${SCALING_STEPS:-40} --overwrite=True"
    # one GPU, all of them (DDP), two (DDP) when that is fewer, and all of them under FSDP2
    local runs="1:ddp"
    [ "$n_gpus" -ge 2 ] && runs="$runs $n_gpus:ddp"
    [ "$n_gpus" -gt 2 ] && runs="$runs 2:ddp"
    [ "$n_gpus" -ge 2 ] && runs="$runs $n_gpus:fsdp"
    rm -f "$OUT"/scaling-*.jsonl  # the summary reads every one it finds
    for run in $runs; do
        local n=${run%%:*} parallel=${run##*:}
        local devices=$(seq -s, 0 $((n - 1)))
        stamp "$n GPU(s), $parallel"
        rm -f out-scaling-$n-$parallel/metrics.jsonl  # an earlier invocation's, which a failed run would leave
        if [ "$n" = 1 ]; then
            CUDA_VISIBLE_DEVICES=$devices timeout 300 python3 train.py $flags --out_dir=out-scaling-1-$parallel 2>&1 | grep -E "^step|error|Error"
        else
            CUDA_VISIBLE_DEVICES=$devices timeout 300 torchrun --standalone --nproc_per_node=$n train.py $flags \
                --parallel=$parallel --out_dir=out-scaling-$n-$parallel 2>&1 | grep -E "^step|error|Error"
        fi
        cp out-scaling-$n-$parallel/metrics.jsonl "$OUT/scaling-$n-$parallel.jsonl" || echo "run failed: no metrics"
    done
    stamp "summary"
    python3 - "$OUT" <<'PY'
import glob, json, os, statistics, sys
runs = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "scaling-*.jsonl"))):
    records = [json.loads(line) for line in open(path)]
    world = next(r["world_size"] for r in records if r["type"] == "config")
    train = [r for r in records if r["type"] == "train"]
    # the first logged interval holds compilation; the rest are steady steps (evals are left out by train.py)
    steady = [r["tokens_per_sec"] for r in train[1:]]
    runs[os.path.basename(path)[8:-6]] = (world, train, steady, [r for r in records if r["type"] == "eval"])
if "1-ddp" not in runs:
    sys.exit("the one-GPU run failed: no efficiency to compute")
one = statistics.median(runs["1-ddp"][2])
print("| run | GPUs | tokens/s (median, min-max) | per GPU | efficiency vs 1 GPU | ms/step |")
for name, (world, train, steady, _) in runs.items():
    median = statistics.median(steady)
    print(f"| {name} | {world} | {median:,.0f} ({min(steady):,.0f}-{max(steady):,.0f}) | {median / world:,.0f} | "
          f"{median / world / one:.3f} | {statistics.median(r['ms_per_step'] for r in train[1:]):.1f} |")
print("loss by step:", ", ".join(runs))
for i, record in enumerate(runs["1-ddp"][1]):
    print(record["step"], " ".join(f"{r[1][i]['loss']:.4f}" if i < len(r[1]) else "-" for r in runs.values()))
print("final eval (train / val):", {name: [(e["step"], round(e["train_loss"], 4), round(e["val_loss"], 4)) for e in r[3]]
                                    for name, r in runs.items()})
PY
}

for stage in "$@"; do "stage_$stage" 2>&1 | tee "$OUT/$stage.log"; done
