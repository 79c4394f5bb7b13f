#!/usr/bin/env bash
# The fifth session's GPU calls (BENCHMARKS.md, "Fifth session"), one stage per argument, e.g.
#   bash scripts/gpu_session5.sh dtests profile inference
# Logs go to $OUT. The suite stages need .gpu_data/r50k_base.tiktoken (carried in; a GPU box has no ../shared);
# suite gave it as a relative path, which the tests' subprocesses cannot find: resuite is the corrected one.
source "$(dirname "$0")/gpu_env.sh"
for stage in "$@"; do
  case $stage in
    order) timeout 240 python3 scripts/attention_launch_order.py > "$OUT/order.log" 2>&1; tail -40 "$OUT/order.log" ;;
    fatests) timeout 200 python3 -m pytest tests/test_flash_attention.py -q -x > "$OUT/fatests.log" 2>&1; tail -4 "$OUT/fatests.log" ;;
    dtests) timeout 200 python3 -m pytest tests/test_flash_attention.py tests/test_model.py -q -x -k "decode or cuda_graph" > "$OUT/dtests.log" 2>&1; tail -4 "$OUT/dtests.log" ;;
    inference_sdpa) timeout 200 python3 bench.py --mode=inference --attention=sdpa --inference_batch_sizes=16 --transformers_compare=False --json="$OUT/inference_sdpa.json" > "$OUT/inference_sdpa.log" 2>&1; tail -8 "$OUT/inference_sdpa.log" ;;
    profile) for args in "--batch=16 --compile_mode=max-autotune-no-cudagraphs" "--batch=16 --compile_mode=default" "--batch=16 --compile_mode=default --attention=sdpa" "--batch=1 --compile_mode=default"; do echo "== $args"; timeout 200 python3 scripts/decode_profile.py --steps=50 $args > "$OUT/profile.log" 2>&1; grep -A14 "wall time per step" "$OUT/profile.log"; done ;;
    inference) timeout 240 python3 bench.py --mode=inference --transformers_compare=False --json="$OUT/inference.json" > "$OUT/inference.log" 2>&1; tail -14 "$OUT/inference.log" ;;
    mtests) timeout 240 python3 -m pytest tests/test_model.py tests/test_sample.py -q -x > "$OUT/mtests.log" 2>&1; tail -4 "$OUT/mtests.log" ;;
    inference_hf) timeout 420 python3 bench.py --mode=inference --json="$OUT/inference_hf.json" > "$OUT/inference_hf.log" 2>&1; tail -22 "$OUT/inference_hf.log" ;;
    suite) GPT2_BPE_PATH=.gpu_data/r50k_base.tiktoken timeout 560 python3 -m pytest tests -q > "$OUT/suite.log" 2>&1; tail -12 "$OUT/suite.log" ;;
    resuite) GPT2_BPE_PATH=$PWD/.gpu_data/r50k_base.tiktoken timeout 400 python3 -m pytest tests/test_prepare.py tests/test_bench.py tests/test_train.py tests/test_sample.py -q > "$OUT/resuite.log" 2>&1; tail -12 "$OUT/resuite.log" ;;
    # bsplit: scripts/backward_split.py was removed in the fifteenth session (the backward is always two kernels)
    bsplit) timeout 300 python3 scripts/backward_split.py > "$OUT/bsplit.log" 2>&1; cat "$OUT/bsplit.log" ;;
    dsweep) timeout 200 python3 scripts/decode_sweep.py > "$OUT/dsweep.log" 2>&1; cat "$OUT/dsweep.log" ;;
    attention) timeout 120 python3 bench.py --mode=attention --json="$OUT/attention.json" > "$OUT/attention.log" 2>&1; tail -10 "$OUT/attention.log" ;;
  esac
done
