"""Decoding speed of the code in one source tree, for A/B runs of two trees interleaved on one GPU: ms per step of
GPT-2 124M (random weights, bf16) with the KV cache at batch 1 and 16, timed as bench.py --mode=inference times it
(bench.measure_generation, compiled step, graphs recorded in the warm-up), 3 repeats; the uncached step at batch 16
once, and how many leading greedy tokens the two agree on. With device cpu a tiny model (a smoke run).

    git archive <commit> | tar -x -C ab/old        # ab/ is git-ignored
    python scripts/decode_ab.py ab/old && python scripts/decode_ab.py .
"""
import os
import sys
tree = os.path.abspath(sys.argv[1])
device = sys.argv[2] if len(sys.argv) > 2 else "cuda"
os.chdir(tree)
sys.path.insert(0, tree)
import torch  # noqa: E402
import bench  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

torch.manual_seed(0)
shape = dict(vocab_size=50304, bias=False) if device == "cuda" else dict(vocab_size=97, n_layer=2, n_head=2,
                                                                         n_embd=32, block_size=64)
model = GPT(GPTConfig(**shape)).to(device).to(torch.bfloat16 if device == "cuda" else torch.float32).eval()
config = dict(bench.DEFAULTS)
if device != "cuda":
    config.update(new_tokens=20, prefill_length=16)
name = os.path.basename(tree.rstrip("/")) or "new"
for B in (1, 16):
    generate = bench.ours_generate(model, True, compile=device == "cuda")
    times = []
    for repeat in range(3):
        result, cached_tokens = bench.measure_generation(generate, B, config, shape["vocab_size"], device,
                                                         full_warmup=repeat == 0)
        times.append(round(result["decode_ms_per_step"], 4))
    line = f"{name} B={B} cached ms/step {times}"
    if B == 16:
        result, uncached_tokens = bench.measure_generation(bench.ours_generate(model, False), B, config,
                                                           shape["vocab_size"], device)
        agree = bench.agreeing_prefix(cached_tokens, uncached_tokens)
        line += f" uncached {result['decode_ms_per_step']:.3f} agree {agree}"
    print(line, flush=True)
