"""bench.py on CPU: every mode runs on a tiny model and reports what it promises (no timing assertions), and the
sizing arithmetic against hand-computed values."""

import json
import math

import numpy as np
import pytest
import torch

import bench
from configurator import load_config
from conftest import fresh_seed, run_script, tiny_config
from model import GPT, GPTConfig

# a tiny model, compile off, few steps: the point is that every code path runs
TINY_FLAGS = ["--device=cpu", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--vocab_size=97",
              "--compile=False", "--warmup_steps=1", "--timed_steps=2", "--new_tokens=12", "--prompt_length=4",
              "--prefill_length=16", "--inference_batch_sizes=1,2"]


def run_bench(*flags):
    # on the CPU our Triton kernels need the interpreter, even on a machine that also has a GPU
    return run_script(["bench.py", *TINY_FLAGS, *flags], env={"TRITON_INTERPRET": "1"})


# -----------------------------------------------------------------------------
# sizing arithmetic

def test_sizing_counts_the_model_itself():
    """Sizing builds the GPT of the shape asked for on the meta device and asks it, so its counts are the model's."""
    flags = dict(bench.DEFAULTS, params=0, n_layer=2, n_head=2, n_embd=32, vocab_size=97, block_size=64)
    params, flops_per_token = bench.params_and_flops_per_token(flags)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=97, block_size=64, bias=flags["bias"]))
    assert (params, flops_per_token) == (model.num_params(), model.flops_per_token(64))
    assert flops_per_token == 6 * params + 12 * 2 * 32 * 64  # PaLM's count: 6 N plus the attention products
    # nanoGPT prints "number of parameters: 123.69M" for GPT-2 124M with biases and the vocabulary padded to 50304:
    # 12 * (12 * 768^2 + 2 * 768 + 11 * 768) + 2 * 768 + 50304 * 768
    gpt2 = dict(bench.DEFAULTS, params=0, n_layer=12, n_head=12, n_embd=768, vocab_size=50304, bias=True)
    assert bench.params_and_flops_per_token(gpt2)[0] == 123_689_472
    no_bias = dict(gpt2, bias=False, vocab_size=50257)  # our default: no biases, the vocabulary padded to 50304
    assert bench.params_and_flops_per_token(no_bias)[0] == 12 * (12 * 768**2 + 2 * 768) + 768 + 50304 * 768
    assert bench.params_and_flops_per_token(dict(gpt2, params=124e6)) == (124e6, 6 * 124e6)  # no shape: 6 N


def test_training_time_and_budget():
    # one hour of 8 GPUs at 989 TFLOP/s and 40% MFU
    flops = 8 * 989e12 * 0.4 * 3600
    assert bench.training_seconds(flops, 8, 989e12, 0.4) == pytest.approx(3600)
    assert bench.budget_flops(8, 7, 989e12, 0.4) == pytest.approx(8 * 7 * 86400 * 989e12 * 0.4)
    assert bench.tokens_in_budget(1e6, 8, 7) == pytest.approx(1e6 * 8 * 7 * 86400)


def test_chinchilla_optimal_spends_the_budget_at_20_tokens_per_param():
    params, tokens = bench.chinchilla_optimal(6 * 124e6 * 2.48e9)  # 124M params x 20 tokens each
    assert params == pytest.approx(124e6) and tokens == pytest.approx(2.48e9)
    assert 6 * params * tokens == pytest.approx(6 * 124e6 * 2.48e9)


def test_sizing_mode_from_flags(tmp_path):
    out = tmp_path / "sizing.json"
    result = run_bench("--mode=sizing", "--params=124e6", "--tokens=2.48e9", "--gpus=8", "--mfu=0.4",
                       "--gpu_peak_flops=989e12", "--tokens_per_sec=500000", f"--json={out}")
    sizing = json.loads(out.read_text())["sizing"]
    assert sizing["flops"] == 6 * 124e6 * 2.48e9  # no shape given: exactly 6 N D
    assert sizing["seconds"] == pytest.approx(6 * 124e6 * 2.48e9 / (8 * 989e12 * 0.4))
    assert sizing["gpu_hours"] == pytest.approx(sizing["seconds"] * 8 / 3600)
    assert sizing["mfu_source"] == "--mfu" and sizing["peak_source"] == "--gpu_peak_flops"
    assert sizing["budget_tokens_at_rate"] == pytest.approx(500000 * 8 * 7 * 86400)
    assert sizing["chinchilla_params"] == pytest.approx(math.sqrt(sizing["budget_flops"] / 120))
    assert "GPU-hours" in result.stdout and "compute-optimal" in result.stdout


def test_piped_into_head_stops_quietly():
    """`python bench.py ... | head -1`: a section whose output meets the closed pipe is not reported as a failed
    benchmark with a traceback; the script stops with status 1 and nothing on stderr. The pipe closes at the
    sizing report's print, the same moment on every run (a real `head` races the script)."""
    code = ("import builtins, runpy, sys\n"
            "real_print = builtins.print\n"
            "def print_into_closed_pipe(*args, **kwargs):\n"
            "    if args and 'GPU-hours' in str(args[0]): raise BrokenPipeError(32, 'Broken pipe')\n"
            "    real_print(*args, **kwargs)\n"
            "builtins.print = print_into_closed_pipe\n"
            "sys.argv = ['bench.py', *sys.argv[1:]]\n"
            "runpy.run_path('bench.py', run_name='__main__')\n")
    result = run_script(["-c", code, "--mode=sizing", "--params=124e6", "--mfu=0.4", "--gpu_peak_flops=989e12"],
                        check=False)
    assert (result.returncode, result.stderr) == (1, "")
    assert "== sizing" in result.stdout and "GPU-hours" not in result.stdout


# -----------------------------------------------------------------------------
# small helpers and the logic around out-of-memory

def test_spread_and_int_lists():
    assert bench.spread([5.0, 1.0, 4.0, 2.0, 9.0]) == {"mean": 4.2, "median": 4.0, "p25": 2.0, "p75": 5.0, "min": 1.0,
                                                       "max": 9.0}
    assert bench.spread([7.0]) == {"mean": 7.0, "median": 7.0, "p25": 7.0, "p75": 7.0, "min": 7.0, "max": 7.0}
    assert bench.as_int_tuple(8, "batch_sizes") == (8,)
    assert bench.as_int_tuple((8, 16), "batch_sizes") == (8, 16)
    for bad in ("8,16", (8, "x"), (0,), (), True):
        with pytest.raises(SystemExit, match="batch_sizes"):
            bench.as_int_tuple(bad, "batch_sizes")


def test_out_of_memory_is_recognized():
    assert bench.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.00 GiB"))
    try:  # torch.compile re-raises errors from inside compiled code wrapped in its own exceptions
        try:
            raise torch.cuda.OutOfMemoryError("boom")
        except Exception as inner:
            raise RuntimeError("backend compiler failed") from inner
    except RuntimeError as wrapped:
        assert bench.is_out_of_memory(wrapped)
    assert bench.is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not bench.is_out_of_memory(ValueError("shape mismatch"))


def test_run_guarded_statuses():
    def fails_with(error):
        def measure():
            raise error
        return measure
    assert bench.run_guarded(lambda: {"x": 1}) == {"x": 1, "status": "ok"}
    assert bench.run_guarded(fails_with(torch.cuda.OutOfMemoryError("out of memory")))["status"] == "oom"
    failed = bench.run_guarded(fails_with(ValueError("broken kernel")))
    assert failed["status"] == "error" and "broken kernel" in failed["error"]


def test_sweep_stops_at_the_first_out_of_memory(monkeypatch):
    calls = []

    def fake_measure(settings, device, dtype):
        calls.append(settings["batch_size"])
        if settings["batch_size"] >= 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return {"tokens_per_sec": {8: 100.0, 16: 120.0}[settings["batch_size"]]}

    monkeypatch.setattr(bench, "measure_training", fake_measure)
    monkeypatch.setattr(bench, "format_trial", lambda trial: str(trial))
    sweep = bench.sweep_batch_sizes("baseline", {}, (64, 8, 32, 16), "cpu", "float32")
    assert calls == [8, 16, 32]  # smallest first; 64 never tried once 32 ran out of memory
    assert sweep["best"]["batch_size"] == 16 and sweep["largest_batch_that_fits"] == 16
    assert not sweep["largest_batch_is_lower_bound"]
    assert [t["status"] for t in sweep["trials"]] == ["ok", "ok", "oom"]


# -----------------------------------------------------------------------------
# the script, end to end

def test_all_modes_with_compare_and_ablation(tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench("--mode=all", "--compare=True", "--ablate=True", "--batch_sizes=2,4",
                       "--attention_triton_on_cpu=True", "--attention_shapes=((1,2,32,16),)", f"--json={out}")
    results = json.loads(out.read_text())
    assert {"info", "train", "attention", "inference", "sizing"} <= set(results)
    assert results["info"]["device"].startswith("CPU") and results["info"]["command"].startswith("python bench.py")

    train = results["train"]
    for variant in ("baseline", "fast"):
        assert [t["batch_size"] for t in train[variant]["trials"]] == [2, 4]
        assert all(t["status"] == "ok" for t in train[variant]["trials"]), train[variant]["trials"]
        best = train[variant]["best"]
        for key in ("ms_per_step", "tokens_per_sec", "mfu", "peak_memory_gib", "first_loss", "tokens_per_step"):
            assert key in best
        assert set(best["ms_per_step"]) == {"mean", "median", "p25", "p75", "min", "max"}
        assert train[variant]["largest_batch_that_fits"] == 4 and train[variant]["largest_batch_is_lower_bound"]
    assert train["baseline"]["best"]["attention"] == "sdpa" and not train["baseline"]["best"]["fused_loss"]
    assert train["fast"]["best"]["attention"] == "triton"
    assert train["fast"]["best"]["fused_loss"]
    # before any optimizer step, both variants compute the same loss on the same batch from the same weights
    for base, fast in zip(train["baseline"]["trials"], train["fast"]["trials"]):
        assert abs(base["first_loss"] - fast["first_loss"]) < 1e-4
        assert abs(base["first_loss"] - math.log(97)) < 0.2
    assert train["speedup"] == pytest.approx(train["fast"]["best"]["tokens_per_sec"]
                                             / train["baseline"]["best"]["tokens_per_sec"])
    levers = {t["variant"]: t for t in train["ablation"]["levers"]}
    assert "attention=triton" in levers and all(t["status"] == "ok" for t in levers.values())
    assert "fused_loss" in levers

    kernels = {row["kernel"]: row for row in results["attention"]["rows"]}
    assert set(kernels) == {"reference", "sdpa", "ours (triton interpreter)"}
    for row in kernels.values():
        assert row["status"] == "ok" and row["fwd_ms"] > 0 and row["fwd_bwd_tflops"] > 0
        assert row["rel_err_vs_first"] < 1e-4  # float32: every kernel computes the same attention
        assert row["fwd_bwd_graph_ms"] is None  # CUDA-graph timing is for GPUs only

    inference = results["inference"]
    implementations = {(r["batch_size"], r["implementation"]) for r in inference["rows"]}
    assert implementations == {(b, i) for b in (1, 2) for i in ("ours (KV cache)", "ours (no cache)", "transformers",
                                                                 "transformers (eager)")}
    for ratio in inference["ratios"]:
        assert ratio["cache_vs_no_cache"] > 0 and ratio["vs_transformers"] > 0
        # greedy decoding of identical float32 weights: the cache and transformers give the same tokens
        assert ratio["cache_vs_no_cache_same_tokens"] == 12 and ratio["vs_transformers_same_tokens"] == 12
        assert ratio["vs_transformers_eager_same_tokens"] == 12

    assert results["sizing"]["mfu_source"] == "assumed"  # a CPU has no MFU
    assert results["sizing"]["tokens_per_sec_source"] == "measured"

    for heading in ("train (ms/step: the mean of the timed steps)", "attention (causal", "inference (float32", "sizing"):
        assert heading in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("fast / baseline tokens/s:")


def test_real_data_measures_the_loader(char_data_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench(f"--data_dir={char_data_dir}", "--batch_size=4", "--gradient_accumulation_steps=2",
                       f"--json={out}")
    run = json.loads(out.read_text())["train"]["run"]
    trial = run["best"]
    assert trial["status"] == "ok" and trial["data"] == "real" and trial["tokens_per_step"] == 4 * 32 * 2
    for key in ("host_data_ms_per_step", "synthetic_ms_per_step", "loader_stall_ms_per_step"):
        assert key in trial
    with open(f"{char_data_dir}/meta.json") as f:
        vocab_size = json.load(f)["vocab_size"]
    assert abs(trial["first_loss"] - math.log(vocab_size)) < 0.3  # the model was sized to the data's vocabulary
    assert "loader:" in result.stdout


def test_bad_flag_fails_in_one_line():
    result = run_script(["bench.py", *TINY_FLAGS, "--mode=bogus"], check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: mode must be one of"), result.stderr[-2000:]


@pytest.mark.parametrize("flag, message", [
    ("--batch_sizes=fast", "batch_sizes must be positive integers"),
    ("--fast_attention=flash", "fast_attention must be one of"),
    ("--ablate_compile_modes=turbo", "compile mode 'turbo'"),
    ("--decode_compile_mode=reduce-overhead", "decode_compile_mode must be one of"),
    ("--new_tokens=100", "must fit in the model's block_size"),
    ("--data_dir=/nonexistent", "no meta.json"),
    ("--n_embd=33", "must be divisible by n_head"),
    ("--batch_size=0", "batch_size must be positive integers"),
    ("--fused_loss=True --dtype=float16", "fused_loss=True does not work in float16"),
    ("--fp8_lm_head=True", "fp8_lm_head=True works inside the fused loss"),
    ("--fp8=True --n_embd=24 --n_head=2", "fp8 needs n_embd a multiple of 16"),
])
def test_bad_flags_are_refused_before_any_work(flag, message):
    config = load_config(bench.DEFAULTS, [*TINY_FLAGS, "--mode=all", *flag.split()])
    with pytest.raises(SystemExit, match=message):
        bench.check_config(config)
        bench.use_data_vocabulary(config)


def test_a_failed_section_fails_the_run(tmp_path):
    """A section that breaks (here: generation raising) ends in a non-zero exit that says which section failed;
    a checkpoint too short for the prompts is a settings error, one line."""
    code = ("import runpy, sys, model\n"
            "def broken(*args, **kwargs): raise RuntimeError('injected failure')\n"
            "model.GPT.generate = broken\n"
            "sys.argv = ['bench.py', *sys.argv[1:]]\n"
            "runpy.run_path('bench.py', run_name='__main__')\n")
    result = run_script(["-c", code, *TINY_FLAGS, "--mode=inference", "--inference_batch_sizes=1",
                         "--transformers_compare=False"], check=False)
    assert result.returncode != 0 and "injected failure" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: the inference benchmark failed (traceback above)"
    from checkpoint import save_checkpoint
    from model import GPT, GPTConfig
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint({"model": model.state_dict(), "model_args": vars(model.config), "tokenizer": {"name": "gpt2"}},
                    str(tmp_path / "short.pt"))
    result = run_script(["bench.py", *TINY_FLAGS, "--mode=inference", f"--init_from={tmp_path / 'short.pt'}",
                         "--inference_batch_sizes=1", "--transformers_compare=False"], check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: prompt_length + new_tokens and prefill_length + 1 "
                                                             "must fit in the model's block_size 16")


def test_a_train_run_where_nothing_ran_fails():
    """Every micro-batch failing (here: a forward pass that raises) must not exit 0 behind a 'failed' table."""
    code = ("import runpy, sys, model\n"
            "def broken(*args, **kwargs): raise RuntimeError('injected failure')\n"
            "model.GPT.forward = broken\n"
            "sys.argv = ['bench.py', *sys.argv[1:]]\n"
            "runpy.run_path('bench.py', run_name='__main__')\n")
    result = run_script(["-c", code, *TINY_FLAGS, "--batch_sizes=2,4"], check=False)
    assert result.returncode == 1, result.stdout[-2000:]
    assert result.stderr.strip().splitlines()[-1] == "error: the train benchmark failed (traceback above)"
    assert "injected failure" in result.stderr


@pytest.mark.parametrize("flag, message", [
    ("--gpus=0", "gpus must be a whole number >= 1"),
    ("--days=-1", "days must be more than 0"),
    ("--mfu=2", "mfu must be in (0, 1]"),
    ("--mfu=-0.1", "mfu must be in (0, 1]"),
    ("--tokens=-1", "tokens must be 0"),
    ("--params=-5", "params must be 0"),
])
def test_bad_sizing_flags_fail_in_one_line(flag, message):
    result = run_script(["bench.py", "--mode=sizing", flag], check=False)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr, result.stderr


def test_json_path_that_is_a_device_is_refused_before_any_work():
    config = load_config(bench.DEFAULTS, [*TINY_FLAGS, "--json=/dev/null"])
    with pytest.raises(SystemExit, match="is not a regular file"):
        bench.check_config(config)


def test_json_path_under_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "jf").write_text("keep me")
    result = run_script(["bench.py", "--mode=sizing", f"--json={tmp_path / 'jf' / 'b.json'}"], check=False)
    assert result.returncode != 0 and result.stdout == ""  # nothing measured, nothing printed
    assert result.stderr.strip().splitlines() == [f"error: --json={tmp_path / 'jf' / 'b.json'}: {tmp_path / 'jf'} is "
                                                  f"a file, not a folder; pass a path in a folder you can write in"]
    assert (tmp_path / "jf").read_text() == "keep me"


# the gaps a mutation audit found (each test fails on a plausible bug the suite let through)

def test_bench_training_throughput_and_mfu_from_the_step_time(monkeypatch):
    """tokens/s = batch x block x accumulation / step time, MFU = flops_per_token x tokens/s / peak, with the
    step time and the peak fixed (on a CPU the real MFU is None, so nothing else checks this arithmetic).
    Kills: tokens/s without the accumulation factor."""
    import bench
    import model as model_module
    from configurator import load_config
    step_ms = float(np.random.default_rng(fresh_seed()).uniform(10, 100))
    monkeypatch.setattr(bench, "time_steps", lambda run_step, n, device: ([step_ms] * n, step_ms))
    monkeypatch.setattr(model_module, "peak_flops", lambda device: 1e12)
    config = load_config(bench.DEFAULTS, ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16",
                                          "--vocab_size=97", "--compile=False", "--batch_size=3",
                                          "--gradient_accumulation_steps=4", "--warmup_steps=1", "--timed_steps=2"])
    result = bench.measure_training(bench.baseline_settings(config), "cpu", "float32")
    assert result["tokens_per_sec"] == pytest.approx(3 * 16 * 4 / (step_ms / 1000))
    flops_per_token = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=97,
                                    bias=False)).flops_per_token(16)
    assert result["mfu"] == pytest.approx(flops_per_token * result["tokens_per_sec"] / 1e12)


def test_bench_measures_fp8_scales_as_train_does_and_counts_the_mean_step(monkeypatch):
    """With fp8, the first micro-batch of every fp8.SCALE_INTERVAL-th step measures the float8 scales, as in
    train.py, and tokens/s comes from the mean step, so that the slower measuring steps count. Kills: the median."""
    import fp8
    monkeypatch.setattr(fp8, "SCALE_INTERVAL", 2)
    flags = []
    real_measure = GPT.measure_fp8_scales
    monkeypatch.setattr(GPT, "measure_fp8_scales", lambda model, flag: (flags.append(flag), real_measure(model, flag)))
    step_ms = [10.0, 40.0, 10.0]

    def time_steps(run_step, n, device):
        for _ in range(n):
            run_step()
        return step_ms[:n], 20.0

    monkeypatch.setattr(bench, "time_steps", time_steps)
    config = load_config(bench.DEFAULTS, ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16",
                                          "--vocab_size=97", "--compile=False", "--batch_size=3", "--fp8=True",
                                          "--gradient_accumulation_steps=2", "--warmup_steps=1", "--timed_steps=3"])
    result = bench.measure_training(config, "cpu", "float32")
    # steps 0 and 1 warm up (with fp8 at least two: the second compiles the graph that reuses the scales), 2-4 are
    # timed; steps 0, 2 and 4 measure, on their first micro-batch
    assert flags == [True, False, False, False, True, False, False, False, True, False]
    assert result["tokens_per_sec"] == pytest.approx(3 * 16 * 2 / 0.020)
    assert result["ms_per_step"]["mean"] == 20.0 and result["ms_per_step"]["median"] == 10.0


def test_bench_training_state_is_the_bytes_adamw_really_keeps():
    """bench's bytes per parameter against the tensors a real step leaves behind: fp32 weights, their gradients
    and AdamW's two moments (train.py's optimizer, one step of a tiny GPT). Kills: 12 bytes per parameter."""
    import bench
    from train import configure_optimizer
    model = GPT(tiny_config())
    optimizer = configure_optimizer(model, {"weight_decay": 0.1, "learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.95},
                                    "cpu")
    _, loss = model(torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16)))
    loss.backward()
    optimizer.step()
    params = list(model.parameters())
    held = sum(t.numel() * t.element_size() for p in params for t in (p, p.grad))
    held += sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
                if torch.is_tensor(t) and t.dim() > 0)  # exp_avg, exp_avg_sq (not the scalar step count)
    assert bench.training_state_bytes(sum(p.numel() for p in params)) == held


def test_the_fast_variant_keeps_the_residual_stream_in_bf16_only_in_bfloat16():
    config = load_config(bench.DEFAULTS, TINY_FLAGS)
    assert bench.fast_settings(config, "cpu", "bfloat16")["bf16_residual"] is True
    assert "bf16_residual" in [name for name, _ in bench.ablation_levers(config, "cpu", "bfloat16")]
    for dtype in ("float32", "float16"):  # the flag is for bf16 autocast only (float16 was never tried)
        assert bench.fast_settings(config, "cpu", dtype)["bf16_residual"] is False
        assert "bf16_residual" not in [name for name, _ in bench.ablation_levers(config, "cpu", dtype)]
    baseline = bench.baseline_settings(dict(config, bf16_residual=True))
    assert baseline["bf16_residual"] is False  # the baseline is plain nanoGPT whatever the flags say
    result = bench.measure_training(dict(baseline, bf16_residual=True, batch_size=2), "cpu", "bfloat16")
    assert result["bf16_residual"] is True and math.isfinite(result["last_loss"])
    assert bench.model_from_settings(dict(baseline, bf16_residual=True)).config.bf16_residual
    with pytest.raises(SystemExit, match=r"bf16_residual=True needs dtype bfloat16 \(this run's is float32\)"):
        bench.main(load_config(bench.DEFAULTS, [*TINY_FLAGS, "--bf16_residual=True", "--dtype=float32"]))


def test_the_fast_variant_uses_float8_only_where_the_kernel_takes_the_width(monkeypatch):
    monkeypatch.setattr("fp8.has_float8_tensor_cores", lambda device: True)  # as on an H100
    config = load_config(bench.DEFAULTS, TINY_FLAGS)
    assert bench.fast_settings(config, "cpu", "bfloat16")["fp8_lm_head"] is True
    assert "fused_loss + fp8_lm_head" in [name for name, _ in bench.ablation_levers(config, "cpu", "bfloat16")]
    narrow = load_config(bench.DEFAULTS, [*TINY_FLAGS, "--n_embd=24", "--n_head=2"])  # not a multiple of 16
    assert bench.fast_settings(narrow, "cpu", "bfloat16")["fp8_lm_head"] is False
    assert not any("fp8" in name for name, _ in bench.ablation_levers(narrow, "cpu", "bfloat16"))
    assert bench.fast_settings(config, "cpu", "float16")["fp8_lm_head"] is False  # float16 has no fused loss
