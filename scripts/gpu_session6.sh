#!/usr/bin/env bash
# The sixth session's GPU calls (BENCHMARKS.md, "Sixth session"), one stage per argument, e.g.
#   bash scripts/gpu_session6.sh dtests inference_hf
# Logs go to $OUT.
source "$(dirname "$0")/gpu_env.sh"
for stage in "$@"; do
  case $stage in
    # the decoding tests: flash_decode against float64, CUDA-graph decoding (with a reused Decoder) against eager
    dtests) timeout 240 python3 -m pytest tests/test_flash_attention.py tests/test_model.py -q -x -k "decode or cuda_graph or decoder" > "$OUT/dtests.log" 2>&1; tail -4 "$OUT/dtests.log" ;;
    mtests) timeout 240 python3 -m pytest tests/test_model.py -q > "$OUT/mtests.log" 2>&1; tail -4 "$OUT/mtests.log" ;;
    inference) timeout 300 python3 bench.py --mode=inference --transformers_compare=False --json="$OUT/inference.json" > "$OUT/inference.log" 2>&1; tail -14 "$OUT/inference.log" ;;
    inference_hf) timeout 420 python3 bench.py --mode=inference --json="$OUT/inference_hf.json" > "$OUT/inference_hf.log" 2>&1; tail -24 "$OUT/inference_hf.log" ;;
    # config/train_shakespeare_char.py for 500 steps, then resumed to 750: last.pt is now written at every eval
    resume) python3 prepare.py --input=.gpu_data/input.txt --tokenizer=char --out_dir=data/tinyshakespeare_char > "$OUT/resume.log" 2>&1
            timeout 200 python3 train.py config/train_shakespeare_char.py --max_iters=500 >> "$OUT/resume.log" 2>&1
            timeout 200 python3 train.py config/train_shakespeare_char.py --max_iters=750 --init_from=resume >> "$OUT/resume.log" 2>&1
            echo "rc $?" >> "$OUT/resume.log"; grep -E "^step [0-9]+: train loss|rc |error" "$OUT/resume.log" ;;
    fatests) timeout 240 python3 -m pytest tests/test_flash_attention.py -q > "$OUT/fatests.log" 2>&1; tail -4 "$OUT/fatests.log" ;;
    # A/B of the attention kernels, interleaved: this tree against ab_old/, an export of the fifth session's final
    # commit (git archive 61566a7 | tar -x -C ab_old; git ignores it, so the device call carries it), which had
    # 2-D backward grids
    ab) for round in 1 2; do
          for tree in . ab_old; do
            name=$([ "$tree" = . ] && echo new || echo old)
            (cd "$tree" && timeout 150 python3 bench.py --mode=attention --json="$OUT/attention_${name}_$round.json" \
              > "$OUT/attention_${name}_$round.log" 2>&1)
            echo "== $name round $round"; grep -E "^16x12|^4x16" "$OUT/attention_${name}_$round.log" | grep -E "ours|cudnn"
          done
        done ;;
    profile) for args in "--batch=16" "--batch=1"; do echo "== $args"; timeout 200 python3 scripts/decode_profile.py --steps=50 $args > "$OUT/profile.log" 2>&1; grep -A24 "wall time per step" "$OUT/profile.log"; done ;;
    # two GPUs (NCCL): FSDP2 for 200 steps, resumed to 300; then a resume without FSDP must be refused
    fsdp) python3 prepare.py --input=.gpu_data/input.txt --tokenizer=char --out_dir=data/tinyshakespeare_char > "$OUT/fsdp.log" 2>&1
          FLAGS="config/train_shakespeare_char.py --eval_interval=100 --eval_iters=20 --log_interval=50 --dropout=0.0 --gradient_accumulation_steps=2 --parallel=fsdp"
          timeout 200 torchrun --standalone --nproc_per_node=2 train.py $FLAGS --max_iters=200 >> "$OUT/fsdp.log" 2>&1
          timeout 200 torchrun --standalone --nproc_per_node=2 train.py $FLAGS --max_iters=300 --init_from=resume >> "$OUT/fsdp.log" 2>&1
          echo "rc $?" >> "$OUT/fsdp.log"
          timeout 120 python3 train.py config/train_shakespeare_char.py --max_iters=400 --init_from=resume >> "$OUT/fsdp.log" 2>&1
          echo "rc $?" >> "$OUT/fsdp.log"; grep -E "^step [0-9]+: train loss|^rc |^error" "$OUT/fsdp.log" ;;
    train) timeout 420 python3 bench.py --mode=train --compare=True --batch_sizes=64,128 --json="$OUT/train.json" > "$OUT/train.log" 2>&1; tail -16 "$OUT/train.log" ;;
  esac
done
