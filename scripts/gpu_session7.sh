#!/usr/bin/env bash
# The seventh session's GPU calls (BENCHMARKS.md, "Seventh session"), one stage per argument, e.g.
#   bash scripts/gpu_session7.sh dtests abdecode
# Logs go to $OUT.
source "$(dirname "$0")/gpu_env.sh"
for stage in "$@"; do
  case $stage in
    # the decoding tests: flash_decode against float64, CUDA-graph decoding (with a reused Decoder) against eager
    dtests) timeout 240 python3 -m pytest tests/test_flash_attention.py tests/test_model.py -q -x -k "decode or cuda_graph or decoder" > "$OUT/dtests.log" 2>&1; tail -4 "$OUT/dtests.log" ;;
    mtests) timeout 240 python3 -m pytest tests/test_model.py -q > "$OUT/mtests.log" 2>&1; tail -4 "$OUT/mtests.log" ;;
    fatests) timeout 240 python3 -m pytest tests/test_flash_attention.py -q > "$OUT/fatests.log" 2>&1; tail -4 "$OUT/fatests.log" ;;
    # A/B of decoding, interleaved: ab/old (in calls 1, 3 and 6 an export of the sixth session's last commit, 5a4b11e) and this tree,
    # timed by scripts/decode_ab.py; ab/ is git-ignored, so the device call carries it
    abdecode) for round in 1 2; do
          for tree in ab/old .; do
            timeout 120 python3 scripts/decode_ab.py "$tree" 2>&1 | grep -E "ms/step|Error|error" | tee -a "$OUT/abdecode.log"
          done
        done ;;
    # A/B of the attention kernels, interleaved: ab/old (an export of this tree's commit) against ab/nodelta (the
    # backward computing delta from O and dO tiles itself, no preprocess kernel); ab/ is git-ignored, so carried
    abattn) for round in 1 2; do
          for tree in ab/old ab/nodelta; do
            (cd "$tree" && timeout 150 python3 bench.py --mode=attention --json="$OUT/attention_$(basename $tree)_$round.json" \
              > "$OUT/attention_$(basename $tree)_$round.log" 2>&1)
            echo "== $tree round $round"; grep -E "^16x12|^4x16" "$OUT/attention_$(basename $tree)_$round.log" | grep -E "ours|cudnn"
          done
        done
        (cd ab/nodelta && timeout 200 python3 -m pytest tests/test_flash_attention.py -q -x > "$OUT/nodelta_tests.log" 2>&1; tail -2 "$OUT/nodelta_tests.log") ;;
    inference) timeout 300 python3 bench.py --mode=inference --transformers_compare=False --json="$OUT/inference.json" > "$OUT/inference.log" 2>&1; tail -14 "$OUT/inference.log" ;;
    inference_hf) timeout 420 python3 bench.py --mode=inference --json="$OUT/inference_hf.json" > "$OUT/inference_hf.log" 2>&1; tail -24 "$OUT/inference_hf.log" ;;
    profile) for args in "--batch=16" "--batch=1"; do echo "== $args"; timeout 200 python3 scripts/decode_profile.py --steps=50 $args > "$OUT/profile.log" 2>&1; grep -A24 "wall time per step" "$OUT/profile.log"; done ;;
    # the backward's halves chosen by two flags now: its tests, and the split script on the current launcher
    # bsplit: scripts/backward_split.py was removed in the fifteenth session (the backward is always two kernels)
    bsplit) timeout 200 python3 scripts/backward_split.py > "$OUT/backward_split.log" 2>&1; grep -E "shape|best|failed|round" "$OUT/backward_split.log" ;;
    # the README's GPU walkthrough: tinyshakespeare at character level, the full config, then sample and eval
    walkthrough) python3 prepare.py --input=.gpu_data/input.txt --tokenizer=char --out_dir=data/tinyshakespeare_char > "$OUT/walkthrough.log" 2>&1
          start=$(date +%s)
          timeout 330 python3 train.py config/train_shakespeare_char.py >> "$OUT/walkthrough.log" 2>&1; echo "train rc $? in $(( $(date +%s) - start )) s" >> "$OUT/walkthrough.log"
          timeout 60 python3 sample.py --model=out-shakespeare-char --start="ROMEO:" --num_samples=1 --max_new_tokens=300 > "$OUT/sample.log" 2>&1; echo "sample rc $?" >> "$OUT/walkthrough.log"
          timeout 120 python3 eval.py --model=out-shakespeare-char --report_dir="$OUT/eval" > "$OUT/eval.log" 2>&1; echo "eval rc $?" >> "$OUT/walkthrough.log"
          grep -E "^step [0-9]+: train loss|rc |error" "$OUT/walkthrough.log"; cat "$OUT/sample.log"; tail -15 "$OUT/eval.log" ;;
    # the final tree: the model tests, and train.py's new ordering on the GPU (a short run, an --overwrite run that
    # fails its checks and must leave the first run alone, then a resume with a shape flag that cannot apply)
    final) timeout 240 python3 -m pytest tests/test_model.py -q > "$OUT/mtests.log" 2>&1; tail -2 "$OUT/mtests.log"
          python3 prepare.py --input=.gpu_data/input.txt --tokenizer=char --out_dir=data/tinyshakespeare_char > "$OUT/final.log" 2>&1
          FLAGS="config/train_shakespeare_char.py --eval_interval=100 --eval_iters=20 --log_interval=50"
          timeout 120 python3 train.py $FLAGS --max_iters=100 >> "$OUT/final.log" 2>&1; echo "rc $?" >> "$OUT/final.log"
          timeout 60 python3 train.py $FLAGS --max_iters=100 --overwrite=True --n_head=5 >> "$OUT/final.log" 2>&1; echo "rc $?" >> "$OUT/final.log"
          ls out-shakespeare-char >> "$OUT/final.log"
          timeout 120 python3 train.py $FLAGS --max_iters=200 --init_from=resume --n_layer=4 >> "$OUT/final.log" 2>&1; echo "rc $?" >> "$OUT/final.log"
          grep -E "^step [0-9]+: train loss|^rc |error|warning|\.pt|metrics" "$OUT/final.log" ;;
    train) timeout 420 python3 bench.py --mode=train --compare=True --batch_sizes=64,128 --json="$OUT/train.json" > "$OUT/train.log" 2>&1; tail -16 "$OUT/train.log" ;;
  esac
done
