"""Where does an eager forward+backward of our attention spend time beyond its kernels? (GPU only)

    python3 scripts/attention_overhead.py      # GPT-2 shape; chrome traces go to $OUT (default .)

Times the kernels called directly, through autograd, through torch.compile's custom op, and SDPA's cuDNN path, with
do_bench and as host time per call (50 calls enqueued without waiting), then prints torch.profiler tables. Its
2026-11-25 H100 output is summarized in BENCHMARKS.md (Attention kernel, v3 notes).
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import flash_attention as fa  # noqa: E402
from triton.testing import do_bench
out_dir = os.environ.get("OUT", ".")
B, H, T, D = 16, 12, 1024, 64
torch.manual_seed(0)
q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
dout = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)
scale = D ** -0.5
qd, kd, vd = q.detach(), k.detach(), v.detach()
o, lse = fa._forward(qd, kd, vd, True, scale)

def kernels_only():
    o, lse = fa._forward(qd, kd, vd, True, scale)
    fa._backward(dout, qd, kd, vd, o, lse, True, scale)

def fwd_only():
    fa._forward(qd, kd, vd, True, scale)

def bwd_only():
    fa._backward(dout, qd, kd, vd, o, lse, True, scale)

def autograd_fn():
    fa.flash_attention(q, k, v).backward(dout)

def autograd_grad():
    out = fa.flash_attention(q, k, v)
    torch.autograd.grad(out, (q, k, v), dout)

def sdpa_cudnn():
    from torch.nn.attention import sdpa_kernel, SDPBackend
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).backward(dout)

compiled = torch.compile(lambda q, k, v: fa.flash_attention(q, k, v))
def compiled_fn():
    compiled(q, k, v).backward(dout)

for name, fn in [("fwd kernel", fwd_only), ("bwd kernels", bwd_only), ("fwd+bwd kernels", kernels_only),
                 ("autograd .backward", autograd_fn), ("autograd.grad", autograd_grad),
                 ("compiled custom op", compiled_fn), ("sdpa cudnn", sdpa_cudnn)]:
    fn(); torch.cuda.synchronize()
    ms = do_bench(fn, warmup=25, rep=200, grad_to_none=[q, k, v], return_mode="median")
    # host time per call: enqueue 50 calls without waiting; if host-bound, wall ~= host time
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(50):
        fn()
    host_ms = (time.perf_counter() - t0) / 50 * 1000
    torch.cuda.synchronize(); wall_ms = (time.perf_counter() - t0) / 50 * 1000
    print(f"{name:<22} do_bench {ms:.3f} ms   host enqueue {host_ms:.3f} ms/call   wall {wall_ms:.3f} ms/call")
    q.grad = k.grad = v.grad = None

from torch.profiler import profile, ProfilerActivity
for name, fn in [("autograd .backward", autograd_fn), ("fwd+bwd kernels", kernels_only)]:
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
    print(f"--- profile: {name} (10 calls)")
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60))
    prof.export_chrome_trace(os.path.join(out_dir, f"trace_{name.split()[0].replace('+','_')}.json"))
