"""train.py end to end on CPU: DDP equals one process, exact resume, surviving kill -9, bad states."""

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from checkpoint import load_checkpoint, save_checkpoint
from conftest import ROOT, TINY_TRAIN_FLAGS, fresh_seed, run_script, tiny_config
from model import GPT


def train_flags(data_dir, out_dir, *extra):
    return ["train.py", *TINY_TRAIN_FLAGS, f"--data_dir={data_dir}", f"--out_dir={out_dir}", *extra]


def logged_losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in records if r["type"] == "train"}


def test_loss_falls_and_checkpoints_are_written(char_data_dir, tmp_path):
    run_script(train_flags(char_data_dir, tmp_path, "--max_iters=30", "--eval_interval=10", "--learning_rate=1e-2"))
    losses = logged_losses(tmp_path)
    assert sorted(losses) == list(range(1, 31))
    assert losses[30] < losses[1] - 0.5
    checkpoint = load_checkpoint(os.path.join(tmp_path, "last.pt"))
    assert checkpoint["step"] == 30 and checkpoint["config"]["max_iters"] == 30
    assert checkpoint["tokenizer"]["name"] == "char"
    assert os.path.isfile(os.path.join(tmp_path, "best.pt"))


def torchrun(*args, check=True):
    return run_script(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args],
                      env={"OMP_NUM_THREADS": "1"}, check=check)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_equal_one_process(char_data_dir, tmp_path, parallel):
    """2 gloo processes under torchrun take the same global batch as 1 process: same losses."""
    flags = ["--max_iters=6", "--eval_interval=100", "--gradient_accumulation_steps=4", f"--parallel={parallel}"]
    run_script(train_flags(char_data_dir, tmp_path / "one", *flags))
    torchrun(*train_flags(char_data_dir, tmp_path / "two", *flags))
    one, two = logged_losses(tmp_path / "one"), logged_losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for step in one:
        assert abs(one[step] - two[step]) < 1e-5, (step, one[step], two[step])
    # the checkpoint holds full, plain weights either way
    one_state = load_checkpoint(os.path.join(tmp_path / "one", "last.pt"))["model"]
    two_state = load_checkpoint(os.path.join(tmp_path / "two", "last.pt"))["model"]
    assert one_state.keys() == two_state.keys()
    for name in one_state:
        torch.testing.assert_close(one_state[name], two_state[name], rtol=1e-4, atol=1e-5)


FSDP_GATHER_COUNT = """
import json, sys
import torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
import train
from model import GPT, GPTConfig
dist.init_process_group("gloo")
gathers = []
def counted(real):
    def all_gather(*args, **kwargs):
        gathers.append(1)
        return real(*args, **kwargs)
    return all_gather
for name in ("all_gather_into_tensor", "all_gather_single"):  # which one FSDP2 calls depends on the torch version
    if hasattr(dist, name):
        setattr(dist, name, counted(getattr(dist, name)))
counts = {}
for micro_steps in (1, 4):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16, attention="sdpa"))
    train.shard_model(model, "cpu")
    for step in range(2):  # the second step starts from the state the first left behind
        gathers.clear()
        for micro_step in range(micro_steps):
            with train.gradient_sync(model, True, 2, enabled=micro_step == micro_steps - 1):
                x = torch.randint(0, 50, (2, 16))
                model(x, x)[1].backward()
    counts[micro_steps] = len(gathers)
if dist.get_rank() == 0:
    print(json.dumps(counts))
dist.destroy_process_group()
"""


def test_fsdp_gathers_the_weights_once_a_step_however_many_micro_steps(tmp_path):
    """Under FSDP2 each block's weights are gathered for the first forward and the last backward of an optimizer
    step, the root's once: 2 x 2 blocks + 1 all-gathers a step, with 1 micro-step or 4 (FSDP2's default would
    gather 4 times as often with 4; BENCHMARKS.md: 55% -> 75-78% scaling on four GPUs)."""
    script = tmp_path / "count.py"
    script.write_text(FSDP_GATHER_COUNT)
    result = torchrun(str(script), ROOT)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"1": 5, "4": 5}


def test_fsdp_resume_is_exact(char_data_dir, tmp_path):
    flags = ["--eval_interval=3", "--parallel=fsdp"]
    straight_and_resumed(char_data_dir, tmp_path, flags, steps=6, distributed=True)
    # a one-process run with --parallel=fsdp shards nothing, so its optimizer state cannot resume under FSDP
    run_script(train_flags(char_data_dir, tmp_path / "single", "--max_iters=3", *flags))
    result = torchrun(*train_flags(char_data_dir, tmp_path / "single", "--max_iters=6", "--init_from=resume", *flags),
                      check=False)
    assert result.returncode != 0 and "written without FSDP sharding" in result.stderr


def test_fsdp_resume_with_fp8_is_exact(char_data_dir, tmp_path):
    """Under FSDP2 each process keeps its own float8 scales; the checkpoint carries both, and a resumed run goes on
    with them: bitwise equal weights."""
    flags = ["--eval_interval=3", "--parallel=fsdp", "--fp8=True"]
    straight, resumed = straight_and_resumed(char_data_dir, tmp_path, flags, steps=6, distributed=True)
    assert_same_measured_fp8_scales(straight, resumed, processes=2)


def straight_and_resumed(char_data_dir, tmp_path, flags, steps=8, distributed=False):
    """The last.pt of `steps` steps straight and of steps/2, stop, resume for steps/2; their weights must be bitwise
    equal. distributed: each run is two gloo processes under torchrun."""
    launch = (lambda args: torchrun(*args)) if distributed else run_script
    launch(train_flags(char_data_dir, tmp_path / "straight", f"--max_iters={steps}", *flags))
    launch(train_flags(char_data_dir, tmp_path / "split", f"--max_iters={steps // 2}", *flags))
    launch(train_flags(char_data_dir, tmp_path / "split", f"--max_iters={steps}", "--init_from=resume", *flags))
    straight = load_checkpoint(os.path.join(tmp_path / "straight", "last.pt"))
    resumed = load_checkpoint(os.path.join(tmp_path / "split", "last.pt"))
    assert straight["step"] == resumed["step"] == steps
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    return straight, resumed


def assert_same_measured_fp8_scales(straight, resumed, processes):
    assert len(straight["fp8_scales"]) == len(resumed["fp8_scales"]) == processes
    for straight_scales, resumed_scales in zip(straight["fp8_scales"], resumed["fp8_scales"]):
        assert straight_scales.keys() == resumed_scales.keys()
        for name, scale in straight_scales.items():
            assert torch.equal(scale, resumed_scales[name]) and scale.item() != 1.0, name  # 1: never measured


def test_resume_is_exact(char_data_dir, tmp_path):
    """N steps straight == N/2 steps, stop, resume for N/2: bitwise equal weights (dropout on, so RNG state matters)."""
    flags = ["--dropout=0.1", "--eval_interval=4"]
    straight_and_resumed(char_data_dir, tmp_path, flags)
    assert logged_losses(tmp_path / "straight") == logged_losses(tmp_path / "split")
    # eval_only on a finished run: one more estimate, the same numbers, and the checkpoint left alone
    mtime = os.path.getmtime(os.path.join(tmp_path / "split", "last.pt"))
    run_script(train_flags(char_data_dir, tmp_path / "split", "--max_iters=8", "--init_from=resume", "--eval_only=True",
                           *flags))
    with open(os.path.join(tmp_path / "split", "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if r["type"] == "eval" and r["step"] == 8]
    assert len(evals) == 2 and evals[0]["val_loss"] == evals[1]["val_loss"]
    assert os.path.getmtime(os.path.join(tmp_path / "split", "last.pt")) == mtime


def test_kill_during_training_then_resume(char_data_dir, tmp_path):
    args = [sys.executable, *train_flags(char_data_dir, tmp_path, "--max_iters=100000", "--eval_interval=5")]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = os.path.join(tmp_path, "last.pt")
    deadline = time.time() + 120
    while not os.path.exists(last) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.7)  # somewhere in the middle of training, maybe of a checkpoint write
    process.send_signal(signal.SIGKILL)
    process.wait()
    step = load_checkpoint(last)["step"]
    (tmp_path / "last.pt.tmp.999999999").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves
    run_script(train_flags(char_data_dir, tmp_path, f"--max_iters={step + 3}", "--init_from=resume", "--eval_interval=5"))
    assert load_checkpoint(last)["step"] == step + 3
    assert not any(".tmp." in name for name in os.listdir(tmp_path))


def test_kill_during_checkpoint_write_keeps_the_last_complete_file(tmp_path):
    """Kill a process that rewrites a large checkpoint over and over, while a temp file is being written."""
    path = tmp_path / "last.pt"
    save_checkpoint({"version": -1, "weights": torch.zeros(10)}, str(path))
    writer = (
        "import sys, torch; sys.path.insert(0, %r)\n"
        "from checkpoint import save_checkpoint\n"
        "big = torch.arange(8_000_000, dtype=torch.float32)\n"
        "for version in range(1000):\n"
        "    save_checkpoint({'version': version, 'weights': big + version}, %r)\n" % (ROOT, str(path))
    )
    process = subprocess.Popen([sys.executable, "-c", writer])
    deadline, killed_mid_write = time.time() + 60, False
    while time.time() < deadline and not killed_mid_write:
        if any(name.startswith("last.pt.tmp.") for name in os.listdir(tmp_path)):
            time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            killed_mid_write = True
    process.wait()
    assert killed_mid_write
    state = torch.load(str(path), weights_only=True)  # the last complete checkpoint, intact
    if state["version"] == -1:
        assert torch.equal(state["weights"], torch.zeros(10))
    else:
        assert torch.equal(state["weights"], torch.arange(8_000_000, dtype=torch.float32) + state["version"])


def nan_loss_from_step(monkeypatch, step):
    """Make the training loss NaN from optimizer step `step` on (2 micro-batches a step, as train_flags sets)."""
    from model import GPT
    original_forward = GPT.forward
    calls = {"n": 0}

    def forward_with_nan(self, idx, targets=None, **kwargs):
        logits, loss = original_forward(self, idx, targets, **kwargs)
        if self.training and targets is not None:
            calls["n"] += 1
            if calls["n"] > 2 * (step - 1):
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward_with_nan)


def test_nonfinite_loss_stops_without_saving(char_data_dir, tmp_path, monkeypatch):
    import train
    from configurator import load_config
    nan_loss_from_step(monkeypatch, 4)
    config = load_config(train.DEFAULTS, train_flags(char_data_dir, tmp_path, "--max_iters=20", "--eval_interval=5")[1:])
    with pytest.raises(SystemExit, match="loss is nan at step 4"):
        train.train(config)
    assert not os.path.exists(os.path.join(tmp_path, "last.pt"))


def test_nonfinite_weights_are_never_saved(char_data_dir, tmp_path, monkeypatch):
    """Weights that went NaN between two log lines (so no loss check saw it) stop the run at the next checkpoint,
    and the last checkpoint written before stays as it was."""
    import train
    from configurator import load_config
    nan_loss_from_step(monkeypatch, 7)  # NaN gradients from step 7, then NaN weights
    config = load_config(train.DEFAULTS, train_flags(char_data_dir, tmp_path, "--max_iters=20", "--eval_interval=5",
                                                     "--log_interval=100")[1:])
    with pytest.raises(SystemExit, match="weights are not finite at step 10; not writing last.pt"):
        train.train(config)
    assert load_checkpoint(os.path.join(tmp_path, "last.pt"))["step"] == 5


def test_fine_tune_and_distill_from_a_checkpoint(char_data_dir, tmp_path):
    run_script(train_flags(char_data_dir, tmp_path / "base", "--max_iters=10", "--eval_interval=10"))
    base = str(tmp_path / "base")
    run_script(train_flags(char_data_dir, tmp_path / "tuned", "--max_iters=4", "--eval_interval=4",
                           f"--init_from={base}", "--block_size=16", "--dropout=0.1"))
    result = run_script(train_flags(char_data_dir, tmp_path / "long", "--max_iters=4", f"--teacher={base}",
                                    "--block_size=64"), check=False)  # the teacher sees only 32 positions
    assert result.returncode != 0 and "sees at most 32 positions" in result.stderr.strip().splitlines()[-1]
    tuned = load_checkpoint(os.path.join(tmp_path / "tuned", "last.pt"))
    assert tuned["model_args"]["block_size"] == 16 and tuned["model_args"]["n_embd"] == 32
    run_script(train_flags(char_data_dir, tmp_path / "student", "--max_iters=4", "--eval_interval=4",
                           f"--teacher={base}", "--n_embd=16"))
    assert load_checkpoint(os.path.join(tmp_path / "student", "last.pt"))["step"] == 4
    # the same student without the teacher: the first step's loss (same weights, same batch) must differ
    run_script(train_flags(char_data_dir, tmp_path / "alone", "--max_iters=1", "--eval_interval=4", "--n_embd=16"))
    first_losses = [next(json.loads(line)["loss"] for line in open(tmp_path / run / "metrics.jsonl")
                         if json.loads(line)["type"] == "train") for run in ("student", "alone")]
    assert abs(first_losses[0] - first_losses[1]) > 1e-3


def test_distillation_loss_matches_float64_math():
    from train import distillation_loss

    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    targets[0, 0] = -1
    weight, temperature = 0.3, 2.0
    s, t, y = student.double().reshape(-1, 11), teacher.double().reshape(-1, 11), targets.reshape(-1)
    keep = y != -1
    s, t, y = s[keep], t[keep], y[keep]
    ce = -(s.log_softmax(-1).gather(1, y[:, None])).mean()
    p_teacher = (t / temperature).softmax(-1)
    kl = (p_teacher * (p_teacher.log() - (s / temperature).log_softmax(-1))).sum(-1).mean()
    expected = (1 - weight) * ce + weight * temperature ** 2 * kl
    assert abs(distillation_loss(student, teacher, targets, weight, temperature).item() - expected.item()) < 1e-5


def test_bad_runs_fail_with_one_line(char_data_dir, tmp_path):
    result = run_script(train_flags(char_data_dir, tmp_path, "--init_from=resume"), check=False)
    assert result.returncode != 0 and "init_from=resume but" in result.stderr.strip().splitlines()[-1]
    result = run_script(train_flags(char_data_dir, tmp_path, "--block_size=100000"), check=False)
    assert result.returncode != 0 and "fewer than block_size" in result.stderr.strip().splitlines()[-1]
    result = run_script(train_flags(tmp_path / "nothing-here", tmp_path), check=False)
    assert result.returncode != 0 and result.stderr.strip().splitlines()[-1].startswith("error:")
    result = run_script(train_flags(char_data_dir, tmp_path, "--attention=triton"), check=False,
                        env={"TRITON_INTERPRET": ""})  # a CPU run, without the tests' interpreter switch
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: attention='triton' needs a CUDA GPU")
    result = run_script(train_flags(char_data_dir, tmp_path, "--fp8=True", "--n_embd=24", "--n_head=2"), check=False)
    assert result.returncode != 0 and "fp8=True needs n_embd a multiple of 16" in result.stderr.strip().splitlines()[-1]
    result = run_script(train_flags(char_data_dir, tmp_path, "--fp8_lm_head=True"), check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: fp8_lm_head=True works inside the fused loss")
    result = run_script(train_flags(char_data_dir, tmp_path, "--eval_interval=0"), check=False)
    assert result.returncode != 0 and result.stderr.strip().splitlines()[-1] == "error: eval_interval must be at least 1, got 0"
    # a new run into an out_dir that holds an earlier run's checkpoint: refused, the checkpoint untouched
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "best.pt").write_bytes(b"an earlier run")
    result = run_script(train_flags(char_data_dir, tmp_path / "earlier"), check=False)
    assert result.returncode != 0 and "already holds best.pt from an earlier run" in result.stderr.strip().splitlines()[-1]
    assert os.listdir(tmp_path / "earlier") == ["best.pt"]
    assert (tmp_path / "earlier" / "best.pt").read_bytes() == b"an earlier run"


def test_overwrite_replaces_the_earlier_run(char_data_dir, tmp_path):
    """--overwrite=True starts clean: the earlier run's best.pt (which sample.py and eval.py load first) and its
    metrics must not outlive the new run, even when the new run never improves on step 0."""
    run_script(train_flags(char_data_dir, tmp_path, "--max_iters=4", "--eval_interval=4"))
    assert os.path.isfile(tmp_path / "best.pt")
    run_script(train_flags(char_data_dir, tmp_path, "--max_iters=2", "--eval_interval=2", "--learning_rate=0.0",
                           "--overwrite=True"))  # no learning: val never beats step 0, so no new best.pt
    assert not os.path.exists(tmp_path / "best.pt") and load_checkpoint(str(tmp_path / "last.pt"))["step"] == 2
    assert {r["step"] for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if r["type"] == "eval"} == {0, 2}
    # eval_only on the finished run is not a new run: allowed without --overwrite, and nothing is removed
    run_script(train_flags(char_data_dir, tmp_path, "--max_iters=2", "--eval_only=True", "--init_from=resume"))
    assert load_checkpoint(str(tmp_path / "last.pt"))["step"] == 2


def test_in_training_hellaswag(tmp_path, char_data_dir):
    from conftest import corpus_text
    text = tmp_path / "corpus.txt"
    text.write_text(corpus_text()[:20_000], encoding="utf-8")
    run_script(["prepare.py", f"--input={text}", "--tokenizer=gpt2", f"--out_dir={tmp_path / 'gpt2'}"])
    items = tmp_path / "hellaswag.jsonl"
    items.write_text("".join(json.dumps({"ctx": f"The king said \u01c2 {i}", "endings": [" yes", " no", " thou art", " my lord"],
                                         "label": i % 4}) + "\n" for i in range(6)))
    run_script(train_flags(tmp_path / "gpt2", tmp_path / "out", "--max_iters=2", "--eval_interval=2",
                           f"--hellaswag_path={items}"))
    with open(tmp_path / "out" / "metrics.jsonl") as f:
        evals = [r for r in map(json.loads, f) if r["type"] == "eval"]
    assert len(evals) == 2 and all(0 <= r["hellaswag_acc_norm"] <= 1 for r in evals)
    # a character vocabulary without "\u01c2" cannot spell these items: refused before training starts
    result = run_script(train_flags(char_data_dir, tmp_path / "char", f"--hellaswag_path={items}"), check=False)
    assert result.returncode != 0 and result.stderr.strip().splitlines()[-1].startswith("error:")
    assert not os.path.exists(tmp_path / "char" / "metrics.jsonl")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_runs(char_data_dir, tmp_path, dtype):
    """bf16 autocast, and fp16 with its GradScaler (whose state goes into the checkpoint), on the CPU."""
    run_script(train_flags(char_data_dir, tmp_path, "--max_iters=3", "--eval_interval=3", f"--dtype={dtype}"))
    checkpoint = load_checkpoint(os.path.join(tmp_path, "last.pt"))
    assert checkpoint["step"] == 3
    assert (checkpoint["scaler"] is not None) == (dtype == "float16")
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())


def test_fused_loss_and_fp8_follow_the_plain_run(char_data_dir, tmp_path):
    """The step options change how a step is computed, not what it learns: same seed, nearby losses."""
    flags = ["--max_iters=8", "--eval_interval=8", "--log_interval=1"]
    runs = {"plain": [], "fused_loss": ["--fused_loss=True"], "fp8": ["--fp8=True"],
            "fp8_lm_head": ["--fused_loss=True", "--fp8_lm_head=True"]}
    losses = {}
    for name, extra in runs.items():
        run_script(train_flags(char_data_dir, tmp_path / name, *flags, *extra))
        losses[name] = logged_losses(tmp_path / name)
    assert losses["plain"].keys() == losses["fp8"].keys() and len(losses["plain"]) == 8
    for step, loss in losses["plain"].items():
        assert abs(losses["fused_loss"][step] - loss) < 1e-4  # the same math in another order
        for name in ("fp8", "fp8_lm_head"):
            assert abs(losses[name][step] - loss) < 0.1  # 8-bit inputs to the products: close, not equal
    for name in ("fp8", "fp8_lm_head"):
        assert max(abs(losses[name][step] - loss) for step, loss in losses["plain"].items()) > 1e-5  # it was on
        assert load_checkpoint(os.path.join(tmp_path / name, "last.pt"))["model_args"][name] is True


def test_fp8_scales_are_measured_at_the_first_step_then_every_interval(char_data_dir, tmp_path, monkeypatch):
    """Only the first micro-batch of a measuring step measures; a resumed run continues with the checkpoint's
    scales, and one without them (an older checkpoint) measures at its first step."""
    import fp8
    import train
    from configurator import load_config
    from model import GPT
    monkeypatch.setattr(fp8, "SCALE_INTERVAL", 4)
    measuring = []
    real = GPT.measure_fp8_scales
    monkeypatch.setattr(GPT, "measure_fp8_scales", lambda model, flag: (measuring.append(flag), real(model, flag)))

    def run(*flags):
        measuring.clear()
        train.train(load_config(train.DEFAULTS, train_flags(char_data_dir, tmp_path, "--fp8=True",
                                                            "--gradient_accumulation_steps=2", *flags)[1:]))
        return [i for i, flag in enumerate(measuring) if flag]  # micro-step indices, two per step

    assert run("--max_iters=10", "--eval_interval=5") == [0, 8, 16]  # steps 0, 4, 8
    assert run("--max_iters=14", "--eval_interval=5", "--init_from=resume") == [4]  # step 12
    checkpoint = load_checkpoint(os.path.join(tmp_path, "last.pt"))
    assert len(checkpoint["fp8_scales"]) == 1 and len(checkpoint["fp8_scales"][0]) == 2 * 4 * 2  # layers x Linears x 2
    del checkpoint["fp8_scales"]
    torch.save(checkpoint, os.path.join(tmp_path, "last.pt"))
    assert run("--max_iters=18", "--eval_interval=5", "--init_from=resume") == [0, 4]  # steps 14 and 16


def test_resume_with_fp8_is_exact(char_data_dir, tmp_path):
    """The float8 scales (measured at step 0, kept through step 8) travel in the checkpoint: bitwise equal weights."""
    straight, resumed = straight_and_resumed(char_data_dir, tmp_path, ["--fp8=True", "--eval_interval=4"])
    assert_same_measured_fp8_scales(straight, resumed, processes=1)


def test_bf16_residual_follows_the_bf16_run_and_needs_bf16(char_data_dir, tmp_path):
    flags = ["--max_iters=8", "--eval_interval=8", "--log_interval=1", "--dtype=bfloat16"]
    run_script(train_flags(char_data_dir, tmp_path / "plain", *flags))
    run_script(train_flags(char_data_dir, tmp_path / "bf16", *flags, "--bf16_residual=True"))
    plain, lowp = logged_losses(tmp_path / "plain"), logged_losses(tmp_path / "bf16")
    assert plain.keys() == lowp.keys() and len(plain) == 8
    gaps = [abs(lowp[step] - loss) for step, loss in plain.items()]
    assert 0 < max(gaps) < 0.05  # it was on, and it learns the same: bf16 sums instead of fp32 ones
    assert load_checkpoint(os.path.join(tmp_path / "bf16", "last.pt"))["model_args"]["bf16_residual"] is True
    result = run_script(train_flags(char_data_dir, tmp_path / "fp32", "--bf16_residual=True", "--dtype=float32"),
                        check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == ("error: bf16_residual=True needs dtype bfloat16 (this run's is "
                                                      "float32); use --dtype=bfloat16 or --bf16_residual=False")
    assert not os.path.exists(tmp_path / "fp32" / "metrics.jsonl")


def test_overwrite_keeps_the_earlier_run_until_the_new_one_passes_its_checks(char_data_dir, tmp_path):
    run_script(train_flags(char_data_dir, tmp_path, "--max_iters=2", "--eval_interval=2"))
    names = ("last.pt", "best.pt", "metrics.jsonl")
    before = {name: (tmp_path / name).read_bytes() for name in names}
    for bad in (["--n_head=3"], [f"--data_dir={tmp_path / 'missing'}"], [f"--init_from={tmp_path / 'nothing.pt'}"]):
        result = run_script(train_flags(char_data_dir, tmp_path, "--overwrite=True", *bad), check=False)
        assert result.returncode != 0 and result.stderr.strip().splitlines()[-1].startswith("error:"), result.stderr
        assert {name: (tmp_path / name).read_bytes() for name in names} == before, bad


def test_resume_checks_the_data_and_keeps_the_checkpoints_shape(char_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_script(train_flags(char_data_dir, run_dir, "--max_iters=2", "--eval_interval=2"))
    # data in another character vocabulary: the token ids would mean other characters
    (tmp_path / "other.txt").write_text("abc cab bca " * 2000, encoding="utf-8")
    run_script(["prepare.py", f"--input={tmp_path / 'other.txt'}", "--tokenizer=char", f"--out_dir={tmp_path / 'other'}"])
    before = (run_dir / "last.pt").read_bytes()
    result = run_script(train_flags(tmp_path / "other", run_dir, "--init_from=resume", "--max_iters=4"), check=False)
    assert result.returncode != 0 and "was trained on tokenizer" in result.stderr.strip().splitlines()[-1]
    assert (run_dir / "last.pt").read_bytes() == before
    # already at max_iters: says so instead of doing nothing silently
    result = run_script(train_flags(char_data_dir, run_dir, "--init_from=resume", "--max_iters=2"))
    assert "nothing to do: " in result.stdout and (run_dir / "last.pt").read_bytes() == before
    # a shape flag cannot change a resumed model: a warning, and the checkpoint records the shape that really ran
    result = run_script(train_flags(char_data_dir, run_dir, "--init_from=resume", "--max_iters=4", "--n_layer=3",
                                    "--eval_interval=4"))
    assert "warning: the model's shape comes from resume: n_layer=2, not this run's n_layer=3" in result.stdout
    checkpoint = load_checkpoint(str(run_dir / "last.pt"))
    assert checkpoint["step"] == 4 and checkpoint["config"]["n_layer"] == checkpoint["model_args"]["n_layer"] == 2
    # dropout is a training option, not the shape: a resumed run that asks for another one gets it, and records it
    run_script(train_flags(char_data_dir, run_dir, "--init_from=resume", "--max_iters=6", "--eval_interval=2",
                           "--dropout=0.25"))
    checkpoint = load_checkpoint(str(run_dir / "last.pt"))
    assert checkpoint["config"]["dropout"] == checkpoint["model_args"]["dropout"] == 0.25
    # one that does not ask keeps the checkpoint's (an exact resume)
    run_script(train_flags(char_data_dir, run_dir, "--init_from=resume", "--max_iters=8", "--eval_interval=2"))
    checkpoint = load_checkpoint(str(run_dir / "last.pt"))
    assert checkpoint["config"]["dropout"] == checkpoint["model_args"]["dropout"] == 0.25
    # asking for the default is asking too: --dropout=0.0 applies, and a shape flag equal to the default warns
    result = run_script(train_flags(char_data_dir, run_dir, "--init_from=resume", "--max_iters=10", "--eval_interval=2",
                                    "--dropout=0.0", "--n_layer=12"))
    assert "warning: the model's shape comes from resume: n_layer=2, not this run's n_layer=12" in result.stdout
    checkpoint = load_checkpoint(str(run_dir / "last.pt"))
    assert checkpoint["config"]["dropout"] == checkpoint["model_args"]["dropout"] == 0.0


def test_resume_keeps_the_dropout_an_older_checkpoint_ran_with(char_data_dir, tmp_path):
    """Checkpoints written before resumes took their settings from the checkpoint could record the default dropout
    in their config while the model ran with another (model_args): a resume keeps the model's."""
    run_script(train_flags(char_data_dir, tmp_path, "--max_iters=2", "--eval_interval=2", "--dropout=0.25"))
    old = load_checkpoint(str(tmp_path / "last.pt"))
    old["config"]["dropout"] = 0.0  # as such a checkpoint recorded it
    save_checkpoint(old, str(tmp_path / "last.pt"))
    run_script(train_flags(char_data_dir, tmp_path, "--max_iters=4", "--eval_interval=2", "--init_from=resume"))
    checkpoint = load_checkpoint(str(tmp_path / "last.pt"))
    assert checkpoint["config"]["dropout"] == checkpoint["model_args"]["dropout"] == 0.25


def test_resume_needs_only_the_out_dir(char_data_dir, tmp_path):
    """`--out_dir=DIR --init_from=resume` alone continues the run with its own settings (data, model, optimizer,
    schedule, device: all from the checkpoint's run), and ends where the uninterrupted run would have."""
    flags = ["--max_iters=8", "--eval_interval=4", "--dropout=0.1", "--seed=7"]
    run_script(train_flags(char_data_dir, tmp_path / "straight", *flags))
    run_script(train_flags(char_data_dir, tmp_path / "split", *flags, "--max_iters=4"))
    result = run_script(["train.py", f"--out_dir={tmp_path / 'split'}", "--init_from=resume", "--max_iters=8"])
    assert "differ from the checkpoint's run" not in result.stdout, result.stdout
    assert f"resuming {tmp_path / 'split' / 'last.pt'} at step 4" in result.stdout
    straight = load_checkpoint(os.path.join(tmp_path / "straight", "last.pt"))
    resumed = load_checkpoint(os.path.join(tmp_path / "split", "last.pt"))
    assert resumed["step"] == 8 and resumed["config"]["data_dir"] == str(char_data_dir)
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


def test_settings_that_cannot_work_are_refused(char_data_dir, tmp_path):
    (tmp_path / "a-file").write_text("")
    for flags, message in (
            (["--eval_only=True"], "error: eval_only=True evaluates a trained model"),
            ([f"--teacher={tmp_path}", "--distill_weight=2"], "error: distillation needs 0 <= distill_weight <= 1"),
            (["--device=mps"], "error: device must be auto, cpu, cuda or cuda:N, got 'mps'"),
            ([f"--out_dir={tmp_path / 'a-file'}"], "is a file, not a folder; pick another --out_dir"),
            (["--fused_loss=True", "--dtype=float16"], "error: fused_loss=True does not work in float16")):
        result = run_script(train_flags(char_data_dir, tmp_path / "out", *flags), check=False)
        assert result.returncode != 0 and message in result.stderr.strip().splitlines()[-1], (flags, result.stderr)
    assert not os.path.exists(tmp_path / "out")  # a run that never started leaves no folder behind


def test_a_new_run_leaves_live_writers_alone_and_starts_its_own_metrics(char_data_dir, tmp_path):
    """A temp checkpoint whose writer is alive (another run saving into the same folder) is not deleted, one whose
    writer is gone is; and an earlier run that never saved a checkpoint leaves no metrics in the new run's."""
    tmp_path.mkdir(exist_ok=True)
    live = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        (tmp_path / f"last.pt.tmp.{live.pid}").write_bytes(b"being written")
        (tmp_path / f"best.pt.tmp.{dead.pid}").write_bytes(b"left by a kill")
        (tmp_path / "metrics.jsonl").write_text(json.dumps({"type": "train", "step": 99, "loss": 9.0}) + "\n")
        run_script(train_flags(char_data_dir, tmp_path, "--max_iters=2", "--eval_interval=2"))
        assert (tmp_path / f"last.pt.tmp.{live.pid}").read_bytes() == b"being written"
        assert not (tmp_path / f"best.pt.tmp.{dead.pid}").exists()
        assert sorted(logged_losses(tmp_path)) == [1, 2]
    finally:
        live.kill()
        live.wait()


def test_overwrite_removes_the_earlier_runs_eval_report(char_data_dir, tmp_path):
    run_script(train_flags(char_data_dir, tmp_path, "--max_iters=2", "--eval_interval=2"))
    run_script(["eval.py", f"--model={tmp_path}", "--tasks=loss", "--device=cpu", "--max_tokens=200",
                "--progress=False"])
    assert (tmp_path / "report.json").exists() and (tmp_path / "report.md").exists()
    run_script(train_flags(char_data_dir, tmp_path, "--max_iters=2", "--eval_interval=2", "--overwrite=True"))
    assert not (tmp_path / "report.json").exists() and not (tmp_path / "report.md").exists()


# the gaps a mutation audit found (each test fails on a plausible bug the suite let through)


def test_lr_schedule_matches_torch_schedulers():
    """get_lr against torch's LinearLR (the warmup: (step + 1) / (warmup + 1) of the peak) and CosineAnnealingLR
    (the decay to min_lr), then min_lr. Kills: warmup from 0, the cosine's period doubled, learning_rate after
    lr_decay_iters."""
    from train import get_lr
    rng = np.random.default_rng(fresh_seed())
    warmup, decay = int(rng.integers(2, 20)), int(rng.integers(25, 80))
    lr = float(rng.uniform(1e-4, 1e-2))
    min_lr = lr * float(rng.uniform(0.01, 0.3))
    config = dict(decay_lr=True, learning_rate=lr, min_lr=min_lr, warmup_iters=warmup, lr_decay_iters=decay)

    def lrs(make_scheduler, steps):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        scheduler = make_scheduler(optimizer)
        out = []
        for _ in range(steps):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    expected = lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, 1 / (warmup + 1), 1.0, total_iters=warmup), warmup)
    expected += lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=decay - warmup, eta_min=min_lr),
                    decay - warmup + 1)
    expected += [min_lr] * 10
    actual = [get_lr(step, config) for step in range(len(expected))]
    assert actual == pytest.approx(expected, rel=1e-9, abs=0)
    assert get_lr(decay // 2, dict(config, decay_lr=False)) == lr


def test_batch_sampler_windows_are_uniform_consecutive_and_shifted_by_one():
    """Shards whose tokens encode (shard, position): every drawn row must be block_size + 1 consecutive tokens of
    one shard starting at the drawn offset, y = x shifted by one, and every window of every shard equally likely.
    Kills: x and y swapped in gather, searchsorted side='left' (a boundary window maps to the wrong shard), a
    window count one too high (a short last window)."""
    from train import BatchSampler
    block_size, lengths = 4, (5, 12, 9, 4)  # 1, 8, 5 and 0 windows: a shard with exactly one, and one with none
    shards = [np.arange(s * 1000, s * 1000 + n, dtype=np.uint16) for s, n in enumerate(lengths)]
    sampler = BatchSampler(shards, block_size, seed=fresh_seed())
    offsets = sampler.draw_offsets(14_000)
    x, y = sampler.gather(offsets)
    assert x.shape == y.shape == (14_000, block_size)
    starts = torch.tensor([1000 * s + o for s, o in offsets])
    assert torch.equal(x, starts[:, None] + torch.arange(block_size))  # the window at the drawn offset
    assert torch.equal(y, x + 1)  # targets: the next token of the same shard
    windows = [(s, o) for s, n in enumerate(lengths) for o in range(max(0, n - block_size))]
    counts = {window: 0 for window in windows}
    for window in offsets:
        counts[window] += 1  # a KeyError here is a window that does not exist
    expected = len(offsets) / len(windows)  # 1000 each; the standard deviation is about 31
    assert all(abs(count - expected) < 5 * expected ** 0.5 for count in counts.values()), counts


def test_estimate_loss_leaves_the_training_data_order_alone(char_data_dir):
    """Evaluation draws from a fixed seed and then restores each sampler's generator: the training batches after
    an eval are those a run without evals would draw (a twin sampler). And its numbers are the mean loss over the
    batches a generator seeded `seed` draws. Kills: the generator state not restored after the estimate."""
    from contextlib import nullcontext

    from prepare import open_split, read_meta
    from train import BatchSampler, estimate_loss
    meta = read_meta(char_data_dir)
    model = GPT(tiny_config(vocab_size=meta["vocab_size"]))
    seed, eval_seed = fresh_seed() % 10_000, 1000
    samplers = {split: BatchSampler(open_split(char_data_dir, split), 32, seed + i) for i, split in
                enumerate(("train", "val"))}
    twins = {split: BatchSampler(open_split(char_data_dir, split), 32, seed + i) for i, split in
             enumerate(("train", "val"))}
    for split in samplers:  # both somewhere mid-stream, as in training
        assert samplers[split].draw_offsets(7) == twins[split].draw_offsets(7)
    estimates = estimate_loss(model, samplers, 3, 4, "cpu", nullcontext(), 0, 1, eval_seed)
    assert model.training
    for split in samplers:
        assert samplers[split].draw_offsets(5) == twins[split].draw_offsets(5), split
        reference = BatchSampler(open_split(char_data_dir, split), 32, eval_seed)
        with torch.no_grad():
            model.eval()
            losses = [model(*reference.gather(reference.draw_offsets(4)))[1].item() for _ in range(3)]
            model.train()
        assert estimates[split] == pytest.approx(np.mean(losses), rel=1e-6), split


def test_train_estimates_val_loss_on_the_val_split(char_data_dir, tmp_path, monkeypatch):
    """The samplers train() hands to estimate_loss read the split they are named after (their tokens equal
    open_split's). Kills: the val sampler built over the train shards (val loss = train loss)."""
    import train
    from configurator import load_config
    from conftest import TINY_TRAIN_FLAGS
    from prepare import open_split
    seen = {}
    original = train.estimate_loss

    def recording(model, samplers, *args):
        seen.update({split: np.concatenate(sampler.shards) for split, sampler in samplers.items()})
        return original(model, samplers, *args)

    monkeypatch.setattr(train, "estimate_loss", recording)
    config = load_config(train.DEFAULTS, [*TINY_TRAIN_FLAGS, f"--data_dir={char_data_dir}", f"--out_dir={tmp_path}",
                                          "--max_iters=0"])
    train.train(config)
    assert set(seen) == {"train", "val"}
    for split in seen:
        assert np.array_equal(seen[split], np.concatenate(open_split(char_data_dir, split))), split


def test_resume_keeps_the_best_val_loss(char_data_dir, tmp_path):
    """best.pt is the lowest val loss of the whole run, across a resume: a resumed run that learns nothing
    (learning_rate 0: the same val loss again) must leave best.pt alone. Kills: best_val_loss not restored from
    the checkpoint (the first eval after a resume always 'improves')."""
    from checkpoint import load_checkpoint
    from conftest import TINY_TRAIN_FLAGS, run_script
    flags = ["train.py", *TINY_TRAIN_FLAGS, f"--data_dir={char_data_dir}", f"--out_dir={tmp_path}", "--eval_interval=3"]
    run_script([*flags, "--max_iters=3", "--learning_rate=1e-2"])
    assert load_checkpoint(str(tmp_path / "best.pt"))["step"] == 3
    run_script([*flags, "--max_iters=6", "--init_from=resume", "--learning_rate=0.0", "--min_lr=0.0"])
    assert load_checkpoint(str(tmp_path / "last.pt"))["step"] == 6
    assert load_checkpoint(str(tmp_path / "best.pt"))["step"] == 3


def test_weight_decay_only_on_linear_and_embedding_weights():
    """GPT-2 / nanoGPT's AdamW groups, classified by module type (a second code path to the dim() rule): decay on
    the weights of Linear and Embedding layers, none on biases and LayerNorm. Kills: the two groups swapped."""
    from train import configure_optimizer
    model = GPT(tiny_config(bias=True))
    optimizer = configure_optimizer(model, {"weight_decay": 0.1, "learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.95},
                                    "cpu")
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    expected = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            decayed = isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) and name == "weight"
            expected[id(p)] = 0.1 if decayed else 0.0
    assert decay == expected
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))



def test_save_checkpoint_replaces_the_file_instead_of_rewriting_it(tmp_path):
    """A reader that opened the checkpoint before a save keeps reading the complete old file: the new file gets
    the path by a rename (a new inode), never by rewriting the old one in place, which a crash or kill could leave
    half done. Deterministic, unlike a kill at a random moment (which lands mostly while the temp file is written).
    Kills: the final rename replaced by a copy into the existing file, and torch.save straight into the path."""
    from checkpoint import save_checkpoint
    path = tmp_path / "last.pt"
    old = torch.randn(50_000)
    save_checkpoint({"weights": old}, str(path))
    with open(path, "rb") as reader:
        save_checkpoint({"weights": torch.randn(80_000)}, str(path))
        assert torch.equal(torch.load(reader, weights_only=True)["weights"], old)
    assert torch.load(path, weights_only=True)["weights"].numel() == 80_000
    assert os.listdir(tmp_path) == ["last.pt"]


class FullDisk(io.FileIO):
    """A file on a disk that fills up after `room` bytes: its writes fail as the OS's do."""
    room = 1000

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    """A failed checkpoint write (inside torch.save, which turns it into its own RuntimeError, or at the fsync)
    is one line naming the file, the OS's reason and the fix; the previous file is intact and no temp file stays."""
    import checkpoint
    from checkpoint import CheckpointWriteError
    path = tmp_path / "last.pt"
    save_checkpoint({"weights": torch.randn(1000)}, str(path))
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint, "open", FullDisk, raising=False)  # atomic_write's open of the temp file
    with pytest.raises(CheckpointWriteError) as raised:
        save_checkpoint({"weights": torch.randn(2000)}, str(path))
    assert str(raised.value) == (f"cannot write checkpoint {path}: No space left on device; the previous checkpoint "
                                 f"there is intact; free some space or choose another --out_dir")
    monkeypatch.setattr(FullDisk, "room", 1 << 30)  # every write fits; the disk fills when the data reaches it

    def full_fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full_fsync)
    with pytest.raises(CheckpointWriteError, match="No space left on device; the previous checkpoint there is intact"):
        save_checkpoint({"weights": torch.randn(2000)}, str(path))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.pt"]

    def folder_fsync_fails(fd):
        import posix
        import stat
        if stat.S_ISDIR(os.fstat(fd).st_mode):  # after the rename: the new file is already in place
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        posix.fsync(fd)  # the real one (os.fsync is patched)
    monkeypatch.setattr(os, "fsync", folder_fsync_fails)
    with pytest.raises(CheckpointWriteError, match="the new checkpoint is in place, but its folder could not be synced"):
        save_checkpoint({"weights": torch.ones(2000)}, str(path))
    assert torch.equal(torch.load(path)["weights"], torch.ones(2000)) and os.listdir(tmp_path) == ["last.pt"]


def test_train_stops_in_one_line_when_the_disk_fills(char_data_dir, tmp_path, monkeypatch):
    """train.py: the checkpoint at step 4 hits a full disk; the run stops with an error line, not torch's
    traceback, and the step-2 checkpoint stays as it was."""
    import checkpoint
    import train
    from configurator import load_config
    kept = {}

    def open_on_a_disk_that_fills(path, mode):
        if os.path.exists(tmp_path / "last.pt"):  # step 2's checkpoints are written: the disk is full from now on
            kept.setdefault("last.pt", (tmp_path / "last.pt").read_bytes())
            return FullDisk(path, mode)
        return open(path, mode)
    monkeypatch.setattr(checkpoint, "open", open_on_a_disk_that_fills, raising=False)
    config = load_config(train.DEFAULTS, train_flags(char_data_dir, tmp_path, "--max_iters=4", "--eval_interval=2")[1:])
    with pytest.raises(SystemExit, match=r"^error: cannot write checkpoint .*(best|last)\.pt: No space left on device; "
                                         r"the previous checkpoint there is intact; free some space or choose another "
                                         r"--out_dir$"):
        train.train(config)
    assert (tmp_path / "last.pt").read_bytes() == kept["last.pt"]
    assert load_checkpoint(str(tmp_path / "last.pt"))["step"] == 2
    assert not [name for name in os.listdir(tmp_path) if ".tmp." in name]


def test_a_failed_checkpoint_write_stops_every_process_in_one_line(char_data_dir, tmp_path):
    """Under torchrun only rank 0 writes; when its write fails (a file-size limit stands in for a full disk), every
    process stops together: rank 0's one-line error, and no traceback from a rank left waiting in a collective."""
    import shlex
    flags = train_flags(char_data_dir, tmp_path / "run", "--max_iters=4", "--eval_interval=2")
    command = (f"ulimit -f 200; exec {shlex.quote(sys.executable)} -m torch.distributed.run --standalone "
               f"--nproc_per_node=2 {shlex.join(flags)}")  # 200 KiB: the data fits, the checkpoint does not
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot write checkpoint ") and "File too large" in errors[0]
    assert "[rank1]" not in result.stderr and "Traceback" not in result.stderr.split("error: cannot write")[0]
    assert not [name for name in os.listdir(tmp_path / "run") if ".tmp." in name or name.endswith(".pt")]


def test_tokenizer_mismatch_names_the_difference_in_one_short_line(tmp_path):
    """Fine-tuning a model on data in another character vocabulary: the error names the differing characters, not
    the thousands of the vocabulary."""
    from dataclasses import asdict

    import train
    chars = "".join(chr(c) for c in range(0x100, 0x100 + 3000))
    model = GPT(tiny_config(vocab_size=len(chars) + 1))
    save_checkpoint({"model": model.state_dict(), "model_args": asdict(model.config),
                     "tokenizer": {"name": "char", "chars": chars}}, str(tmp_path / "model.pt"))
    data_chars = chars.replace(chars[7], "") + "é"  # one character lost, one gained
    config = dict(train.DEFAULTS, init_from=str(tmp_path / "model.pt"), data_dir="data/other")
    with pytest.raises(SystemExit) as raised:
        train.build_model(config, {"tokenizer": {"name": "char", "chars": data_chars}}, "cpu")
    message = str(raised.value)
    assert message == (f"error: {tmp_path / 'model.pt'} uses tokenizer char (3000 characters; 1 not in the other: "
                       f"{chars[7]!r}) but data/other was prepared with char (3000 characters; 1 not in the other: "
                       f"'é'); prepare the data with the model's tokenizer")


def test_load_model_from_an_out_dir_takes_best_pt(tmp_path):
    """An out_dir with both files: sample.py and eval.py load best.pt (the lowest val loss), not last.pt.
    Kills: find_checkpoint trying last.pt first."""
    from dataclasses import asdict

    from checkpoint import load_model, save_checkpoint
    for name in ("last.pt", "best.pt"):
        model = GPT(tiny_config())
        save_checkpoint({"model": model.state_dict(), "model_args": asdict(model.config),
                         "tokenizer": {"name": "char", "chars": "".join(chr(32 + i) for i in range(96))}},
                        str(tmp_path / name))
        if name == "best.pt":
            best = model.state_dict()
    loaded, _, _ = load_model(str(tmp_path))
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, best[name]), name


def test_atomic_write_follows_links_and_refuses_devices_and_pipes(tmp_path):
    """A rename would replace a link, a device or a pipe instead of writing into it (bench.py --json=/dev/full
    once turned /dev/full into a file)."""
    from checkpoint import atomic_write
    (tmp_path / "target.json").write_text("old")
    os.symlink(tmp_path / "target.json", tmp_path / "link.json")
    atomic_write(str(tmp_path / "link.json"), lambda f: f.write(b"new"))
    assert os.path.islink(tmp_path / "link.json") and (tmp_path / "target.json").read_text() == "new"
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ValueError, match="not a regular file"):
        atomic_write(str(tmp_path / "pipe"), lambda f: f.write(b"x"))
    assert not os.path.isfile(tmp_path / "pipe")


def test_export_into_a_training_run_is_refused(char_data_dir, tmp_path):
    """config.json beside best.pt would make sample.py and eval.py read the folder as a Hugging Face export."""
    run_script(train_flags(char_data_dir, tmp_path, "--max_iters=2", "--eval_interval=2"))
    result = run_script(["checkpoint.py", f"--model={tmp_path}", f"--export_hf={tmp_path}"], check=False)
    assert result.returncode != 0 and "holds a training run" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "config.json").exists()


def test_train_settings_checked_and_resume_names_what_changed(char_data_dir, tmp_path):
    for flags, message in ((["--out_dir="], "error: out_dir is empty"),
                           (["--max_iters=-5"], "error: max_iters must be 0 (evaluate only) or more")):
        result = run_script([*train_flags(char_data_dir, tmp_path / "x"), *flags], check=False)
        assert result.returncode != 0 and result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
    run_script(train_flags(char_data_dir, tmp_path / "run", "--max_iters=2", "--eval_interval=2"))
    result = run_script(train_flags(char_data_dir, tmp_path / "run", "--max_iters=4", "--eval_interval=2",
                                    "--init_from=resume", "--learning_rate=5e-4"))
    assert "differ from the checkpoint's run: learning_rate=0.0005 (was 0.001)" in result.stdout


def test_unwritable_output_folders_are_named(tmp_path, monkeypatch):
    """Every script checks its output folder before its work: a file in the way, or a folder it may not write in
    (chmod is no test as root, who may write anywhere: os.access stands in for the permission bits)."""
    from checkpoint import unwritable_folder
    (tmp_path / "a-file").write_text("")
    assert unwritable_folder(str(tmp_path / "new" / "run")) is None
    assert unwritable_folder(str(tmp_path / "a-file" / "run")) == f"{tmp_path / 'a-file'} is a file, not a folder"
    monkeypatch.setattr(os, "access", lambda path, mode: os.path.abspath(path) != str(tmp_path))
    assert unwritable_folder(str(tmp_path / "new" / "run")) == f"{tmp_path} is not writable"



def test_only_our_errors_become_one_line(monkeypatch, capsys):
    """train.py prints bad input (our error classes) as one line; any other ValueError, e.g. torch's shape mismatch
    in a model being hacked on, is a bug and keeps its traceback. Ctrl-C names the step of the first checkpoint."""
    import train
    from model import ModelError

    def raising(error):
        def fake_train(config, passed):
            raise error
        return fake_train

    monkeypatch.setattr(train, "train", raising(ValueError("Expected input batch_size (4) to match target (3)")))
    with pytest.raises(ValueError, match="Expected input batch_size"):
        train.main(["--device=cpu"])
    monkeypatch.setattr(train, "train", raising(ModelError("n_embd (32) must be divisible by n_head (3)")))
    with pytest.raises(SystemExit, match="^error: n_embd"):
        train.main(["--device=cpu"])
    from flash_attention import FlashAttentionError  # the kernel's own refusals are bad input too
    monkeypatch.setattr(train, "train", raising(FlashAttentionError("flash_attention: head dim 192 > 128")))
    with pytest.raises(SystemExit, match="^error: flash_attention: head dim 192"):
        train.main(["--device=cpu"])
    monkeypatch.setattr(train, "train", raising(KeyboardInterrupt()))
    with pytest.raises(SystemExit) as stopped:
        train.main(["--device=cpu", "--out_dir=/nonexistent-folder", "--max_iters=200", "--eval_interval=250"])
    assert stopped.value.code == 130
    assert "first checkpoint (written at step 200)" in capsys.readouterr().err
