"""Forward-kernel launch order (flash_attention._attn_fwd's GROUP_HEADS) against cuDNN, on one GPU, bf16, causal.
Group 1 is the order before the fifth session (all of one head's query tiles, then the next head's).

    python scripts/attention_launch_order.py

For each shape and group size: the forward alone (do_bench median), then forward+backward replayed from a CUDA graph
for group 1 (the old order), the best group, and SDPA's cuDNN backend; two interleaved rounds.
"""
import functools
import os
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import flash_attention as fa  # noqa: E402

print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
original_forward = fa._forward
results = {}
for round_ in range(2):
    for B, H, T, D in ((16, 12, 1024, 64), (4, 16, 4096, 128)):
        torch.manual_seed(round_)
        q, k, v, dout = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        scale = D ** -0.5
        tiles = fa._config(D, q.dtype, q.device)["fwd"][:4]

        def config(group):
            return {**fa._config(D, q.dtype, q.device), "fwd": (*tiles, group)}
        reference = original_forward(q, k, v, True, scale, config(1))[0]
        groups = sorted({1, 2, 4, 8, 16, 32, B * H})
        for group in groups:
            out = original_forward(q, k, v, True, scale, config(group))[0]
            assert torch.equal(out, reference), f"group {group} changed the output"
            ms = do_bench(lambda: original_forward(q, k, v, True, scale, config(group)), warmup=25, rep=200,
                          return_mode="median")
            results.setdefault((D, "fwd", group), []).append(ms)
            print(f"round {round_} D={D} fwd group {group:>3}: {ms:.4f} ms", flush=True)
        best = min(groups, key=lambda g: results[(D, "fwd", g)][-1])
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
        for name, group in (("ours group 1", 1), (f"ours group {best}", best), ("cudnn", None)):
            if group is None:
                def step():
                    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                        out = torch.nn.functional.scaled_dot_product_attention(qg, kg, vg, is_causal=True)
                    return torch.autograd.grad(out, (qg, kg, vg), dout)
            else:
                fa._forward = functools.partial(original_forward, config=config(group))

                def step():
                    return torch.autograd.grad(fa.flash_attention(qg, kg, vg, causal=True), (qg, kg, vg), dout)
            step()
            ms = do_bench_cudagraph(step, rep=200, return_mode="median")
            fa._forward = original_forward
            results.setdefault((D, "fwd+bwd graph", name), []).append(ms)
            print(f"round {round_} D={D} fwd+bwd (CUDA graph) {name}: {ms:.4f} ms", flush=True)
print("\nsummary (ms, per round)")
for key, values in results.items():
    print(f"  D={key[0]:<4} {key[1]:<14} {str(key[2]):<14} " + "  ".join(f"{v:.4f}" for v in values))
