"""Where a decoding step's GPU time goes: GPT-2 124M (random weights, bf16), the compiled CUDA-graph decoder, after
a prompt of `prompt` tokens, one row per batch. Prints the kernels by total time over `steps` steps.

    python scripts/decode_profile.py --batch=16 --steps=50 [--compile_mode=max-autotune-no-cudagraphs] [--attention=sdpa]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from model import GPT, GPTConfig  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--batch", type=int, default=16)
parser.add_argument("--prompt", type=int, default=300)
parser.add_argument("--steps", type=int, default=50)
parser.add_argument("--compile", type=int, default=1)
parser.add_argument("--compile_mode", default="default")
parser.add_argument("--attention", default="auto")
args = parser.parse_args()

torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=50304, bias=False, attention=args.attention)).cuda().to(torch.bfloat16).eval()
prompt = torch.randint(50304, (args.batch, args.prompt), device="cuda")
tokens = model.generate(prompt, 10 + 3 * args.steps, temperature=0.0, compile=bool(args.compile),
                        compile_mode=args.compile_mode)
for _ in range(10):  # compile, record the graph
    next(tokens)
# wall time per step, and how long the host takes to queue a step: if that is as long as the step, the GPU waits
torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(args.steps):
    next(tokens)
queued = time.perf_counter()
torch.cuda.synchronize()
end = time.perf_counter()
print(f"wall time per step {1e6 * (end - start) / args.steps:.1f} us, host time to queue a step "
      f"{1e6 * (queued - start) / args.steps:.1f} us")
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(args.steps):
        next(tokens)
    torch.cuda.synchronize()
events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
print(f"GPU time per step: {sum(e.time_range.elapsed_us() for e in events) / args.steps:.1f} us, "
      f"{len(events) / args.steps:.1f} kernels per step")
totals = {}
for e in events:
    calls, us = totals.get(e.name, (0, 0.0))
    totals[e.name] = (calls + 1, us + e.time_range.elapsed_us())
print(f"{'us/step':>8} {'calls/step':>10}  kernel")
for name, (calls, us) in sorted(totals.items(), key=lambda kv: -kv[1][1])[:30]:
    print(f"{us / args.steps:8.1f} {calls / args.steps:10.1f}  {name[:110]}")
