"""Shared fixtures: a small prepared character-level dataset and a tiny trained checkpoint."""

import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run in Triton's CPU interpreter; it must be chosen before any kernel is defined,
    # i.e. before any test module imports flash_attention, so it is set here, first.
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")

# a tiny model and few steps: the point is the mechanics, on 2 CPU cores
TINY_TRAIN_FLAGS = [
    "--device=cpu", "--dtype=float32", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32",
    "--block_size=32", "--batch_size=4", "--gradient_accumulation_steps=2", "--eval_iters=2",
    "--log_interval=1", "--learning_rate=1e-3", "--warmup_iters=2", "--lr_decay_iters=20", "--min_lr=1e-4",
    "--attention=sdpa",
]


def fresh_seed():
    """A new seed each run (a failure message should print it), so that tests see fresh random inputs."""
    return int.from_bytes(os.urandom(4), "little")


def tiny_config(**overrides):
    """A GPTConfig small enough for the CPU: 2 layers, 32 wide, a 97-token vocabulary, plain SDPA attention."""
    from model import GPTConfig
    args = dict(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True, attention="sdpa")
    args.update(overrides)
    return GPTConfig(**args)


def run_script(args, check=True, env=None, **kwargs):
    """Run one of the repo's scripts in a fresh interpreter; returns the CompletedProcess."""
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, **(env or {})), **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def run_into_closed_pipe(args, lines=0):
    """Run a repo script (or `-c CODE`) whose reader stops after `lines` lines, as `python X.py | head -N` does;
    returns (returncode, stderr). The read end is closed at once after those lines, so later writes fail. stdout
    is block-buffered, as in a user's shell, whatever PYTHONUNBUFFERED says here."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env)
    for _ in range(lines):
        process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read().decode(errors="replace")
    return process.wait(timeout=120), stderr


def corpus_text():
    """About 60 kB of English: a slice of tinyshakespeare where available, else generated verse."""
    path = os.path.join(SHARED, "tinyshakespeare", "input.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()[:60_000]
    # a play in the same shape (speakers in capitals, then their lines), so the prompts the tests use ("ROMEO:",
    # "KING:") are spelled by the character vocabulary on machines without ../shared
    words = "thou art the fairest rose of all that bloom in summer and in spring my love".split()
    speakers = ("ROMEO:", "KING:", "JULIET:")
    lines = []
    for i in range(6000):
        if i % 4 == 0:
            lines.append("\n" + speakers[i // 4 % len(speakers)])
        lines.append(" ".join(words[(i * 7 + j) % len(words)] for j in range(9)))
    return "\n".join(lines)


@pytest.fixture(scope="session")
def char_data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("char_data")
    text_path = root / "input.txt"
    text_path.write_text(corpus_text(), encoding="utf-8")
    out_dir = root / "prepared"
    run_script(["prepare.py", f"--input={text_path}", "--tokenizer=char", f"--out_dir={out_dir}"])
    return str(out_dir)
