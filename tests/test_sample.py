"""sample.py: streams text from our checkpoints and Hugging Face folders; prompts; errors."""

import numpy as np
import pytest
import torch

from conftest import TINY_TRAIN_FLAGS, fresh_seed, run_into_closed_pipe, run_script, tiny_config
from model import GPT


@pytest.fixture(scope="module")
def tiny_checkpoint(char_data_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("tiny_run")
    run_script(["train.py", *TINY_TRAIN_FLAGS, f"--data_dir={char_data_dir}", f"--out_dir={out_dir}",
                "--max_iters=20", "--eval_interval=10"])
    return str(out_dir)


def tiny_vocabulary(out_dir):
    from checkpoint import find_checkpoint, load_checkpoint
    return load_checkpoint(find_checkpoint(out_dir))["tokenizer"]["chars"]


def sample(model, *flags, check=True):
    return run_script(["sample.py", f"--model={model}", "--device=cpu", "--max_new_tokens=30", *flags], check=check)


def test_greedy_sampling_is_deterministic_and_cached_equals_uncached(tiny_checkpoint):
    runs = [sample(tiny_checkpoint, "--temperature=0", "--num_samples=2", "--start=ROMEO:", f"--use_cache={cache}").stdout
            for cache in (True, False)]
    assert runs[0] == runs[1]
    pieces = runs[0].split("\n---------------\n")
    assert pieces[0].startswith("ROMEO:") and len(pieces[0]) > len("ROMEO:") and pieces[0] == pieces[1]


def test_seeded_sampling_repeats_and_prompt_file(tiny_checkpoint, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("KING:\n", encoding="utf-8")
    first = sample(tiny_checkpoint, f"--start=FILE:{prompt}", "--seed=7", "--top_k=5", "--top_p=0.9").stdout
    second = sample(tiny_checkpoint, f"--start=FILE:{prompt}", "--seed=7", "--top_k=5", "--top_p=0.9").stdout
    other_seed = sample(tiny_checkpoint, f"--start=FILE:{prompt}", "--seed=8", "--top_k=5", "--top_p=0.9").stdout
    assert first == second and first.startswith("KING:\n") and other_seed != first
    # keeping one token (top_k=1, or a tiny nucleus) is greedy decoding, whatever the temperature and seed
    greedy = sample(tiny_checkpoint, f"--start=FILE:{prompt}", "--temperature=0").stdout
    assert sample(tiny_checkpoint, f"--start=FILE:{prompt}", "--top_k=1", "--temperature=2", "--seed=3").stdout == greedy
    assert sample(tiny_checkpoint, f"--start=FILE:{prompt}", "--top_k=0", "--top_p=1e-6").stdout == greedy


def test_samples_from_a_hugging_face_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=2)  # the GPT-2 vocabulary
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    from tokenizer import load_tokenizer
    out = sample(tmp_path, "--start=Hello world", "--num_samples=1", "--max_new_tokens=5", "--temperature=0").stdout
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    gpt2 = load_tokenizer({"name": "gpt2"})
    with torch.no_grad():
        ids = hf.generate(torch.tensor([gpt2.encode("Hello world")]), max_new_tokens=5, do_sample=False,
                          pad_token_id=gpt2.eot_token)[0].tolist()
    expected = ids[:ids.index(gpt2.eot_token, 2)] if gpt2.eot_token in ids[2:] else ids  # we stop at end-of-text
    assert out == gpt2.decode(expected) + "\n---------------\n"


def test_errors_are_one_line(tiny_checkpoint, tmp_path):
    result = sample(tmp_path / "missing", check=False)
    assert result.returncode != 0 and result.stderr.strip().splitlines()[-1].startswith("error: no checkpoint at")
    result = sample(tiny_checkpoint, f"--start=FILE:{tmp_path}/nope.txt", check=False)
    assert result.returncode != 0 and "cannot read prompt file" in result.stderr.strip().splitlines()[-1]
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    result = sample(corrupt, check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {corrupt} is not a readable checkpoint")
    state_dict = tmp_path / "state_dict.pt"  # a .pt file that is not one of train.py's checkpoints
    torch.save({"weight": torch.zeros(2)}, state_dict)
    result = sample(state_dict, check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {state_dict} is not a train.py checkpoint")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9".encode("latin-1"))
    result = sample(tiny_checkpoint, f"--start=FILE:{latin1}", check=False)
    assert result.returncode != 0 and "is not UTF-8 text" in result.stderr.strip().splitlines()[-1]
    for flag, problem in (("--temperature=-1", "temperature must be 0"), ("--top_k=-1", "top_k must be"),
                          ("--top_p=0", "top_p must be in (0, 1]"), ("--top_p=1.5", "top_p must be in (0, 1]")):
        result = sample(tiny_checkpoint, flag, check=False)
        assert result.returncode != 0 and result.stdout == ""
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: {problem}"), result.stderr
    result = sample(tiny_checkpoint, "--compile_mode=reduce-overhead", check=False)  # makes its own CUDA graphs
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["error: compile_mode must be one of default, "
                                                  "max-autotune-no-cudagraphs, got 'reduce-overhead'"]
    result = sample(tiny_checkpoint, "--start=\u0298", check=False)  # not in the character vocabulary
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["error: character '\u0298' is not in this char tokenizer's "
                                                  f"vocabulary ({len(tiny_vocabulary(tiny_checkpoint))} characters "
                                                  "from the training data)"]


def test_export_a_checkpoint_to_hugging_face(tiny_checkpoint, tmp_path):
    transformers = pytest.importorskip("transformers")
    from checkpoint import load_model
    run_script(["checkpoint.py", f"--model={tiny_checkpoint}", f"--export_hf={tmp_path / 'hf'}"])
    ours, _, _ = load_model(tiny_checkpoint)
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    idx = torch.randint(0, ours.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], rtol=1e-4, atol=1e-4)


def test_negative_lengths_are_refused(tiny_checkpoint):
    for flag in ("--num_samples=-1", "--max_new_tokens=-5"):
        result = sample(tiny_checkpoint, flag, check=False)
        assert result.returncode != 0 and result.stdout == ""
        assert result.stderr.strip().splitlines() == [f"error: {flag[2:].split('=')[0]} must be 0 or more, "
                                                      f"got {flag.split('=')[1]}"]
    result = sample(tiny_checkpoint, "--seed=99999999999999999999", check=False)  # past what torch's seeds hold
    assert result.returncode != 0 and result.stderr.strip().splitlines() == [
        "error: seed must be in [0, 2**63), got 99999999999999999999"]


def interrupt_when_output_starts(args):
    """Start a script, send it SIGINT (Ctrl-C) once it has printed something; (returncode, stdout, stderr)."""
    import os
    import signal
    import subprocess
    import sys
    from conftest import ROOT
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"),
                               # a shell's background job ignores SIGINT; the script should see Ctrl-C as a user does
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = os.read(process.stdout.fileno(), 1)  # not .read(1): communicate() would skip its buffer
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return process.returncode, (first + out).decode(), err.decode()


def test_ctrl_c_stops_a_stream_quietly(tiny_checkpoint):
    code, out, err = interrupt_when_output_starts(["sample.py", f"--model={tiny_checkpoint}", "--device=cpu",
                                                   "--num_samples=1000", "--max_new_tokens=1000", "--start=ROMEO:"])
    assert code == 130 and out.startswith("ROMEO:")
    assert "Traceback" not in err and err.strip() == "interrupted"


def test_piped_into_head_stops_quietly(tiny_checkpoint):
    """`python sample.py | head -3`: the stream stops when head exits, without a BrokenPipeError traceback."""
    returncode, stderr = run_into_closed_pipe(["sample.py", f"--model={tiny_checkpoint}", "--device=cpu",
                                               "--num_samples=50", "--max_new_tokens=100", "--start=ROMEO:"], lines=1)
    assert (returncode, stderr) == (1, "")


def test_unreadable_hugging_face_folders_fail_in_one_line(tiny_checkpoint, tmp_path):
    import json
    hf = tmp_path / "hf"
    run_script(["checkpoint.py", f"--model={tiny_checkpoint}", f"--export_hf={hf}"])
    # (a char model: the vocabulary check would refuse it, but reading the files fails first)
    weights = (hf / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(weights[:len(weights) // 2])  # a copy cut short
    result = sample(hf, check=False)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {hf / 'model.safetensors'} is unreadable, "
                                                             f"truncated or corrupt"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # the older format: a pytorch_model.bin cut short
    from safetensors.torch import load
    torch.save(load(weights), hf / "pytorch_model.bin")
    (hf / "model.safetensors").unlink()
    state = (hf / "pytorch_model.bin").read_bytes()
    (hf / "pytorch_model.bin").write_bytes(state[:len(state) // 2])
    result = sample(hf, check=False)
    assert result.returncode != 0 and result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"error: {hf / 'pytorch_model.bin'} is unreadable, truncated or corrupt"), \
        result.stderr
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps(config)[:-5])
    result = sample(hf, check=False)
    assert result.returncode != 0 and result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"error: {hf / 'config.json'} is not valid JSON"), result.stderr


def test_export_refuses_to_overwrite_or_write_into_a_file(tiny_checkpoint, tmp_path):
    import os
    hf = tmp_path / "hf"
    run_script(["checkpoint.py", f"--model={tiny_checkpoint}", f"--export_hf={hf}"])
    before = {name: (hf / name).read_bytes() for name in ("config.json", "model.safetensors")}
    (hf / "config.json").write_text("{}")  # an export someone edited: must survive a second export by mistake
    result = run_script(["checkpoint.py", f"--model={tiny_checkpoint}", f"--export_hf={hf}"], check=False)
    assert result.returncode != 0 and result.stderr.strip().splitlines() == [
        f"error: {hf} already holds a model (config.json, model.safetensors); pass --overwrite=True to replace it, "
        f"or choose another --export_hf folder"]
    assert (hf / "config.json").read_text() == "{}"
    run_script(["checkpoint.py", f"--model={tiny_checkpoint}", f"--export_hf={hf}", "--overwrite=True"])
    assert {name: (hf / name).read_bytes() for name in before} == before
    # both files get the permissions open() gives (safetensors alone would write its file 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert {os.stat(hf / name).st_mode & 0o777 for name in before} == {0o666 & ~umask}
    a_file = tmp_path / "somefile"
    a_file.write_text("keep me")
    result = run_script(["checkpoint.py", f"--model={tiny_checkpoint}", f"--export_hf={a_file}"], check=False)
    assert result.returncode != 0 and result.stderr.strip().splitlines() == [
        f"error: --export_hf={a_file}: {a_file} is a file, not a folder; pass a new or existing folder you can write in"]
    assert a_file.read_text() == "keep me"


def test_atomic_write_gives_the_permissions_open_would(tmp_path):
    import os
    from checkpoint import atomic_write
    umask = os.umask(0o027)  # one that differs from the usual 022, so a fixed mode would show
    try:
        atomic_write(str(tmp_path / "f.bin"), lambda f: f.write(b"x"))
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / "f.bin").st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["f.bin"]  # no temp file left behind


# the gaps a mutation audit found (each test fails on a plausible bug the suite let through)

def test_generate_text_keeps_the_end_of_a_prompt_longer_than_block_size():
    """A prompt longer than block_size: the model sees its last block_size tokens, as the uncached generate (a
    second code path) crops; the text must equal that path's, and the model must have been given the prompt's last
    block_size tokens (a random model's greedy text can coincide for two contexts). Kills: the prompt cropped to
    its first block_size tokens."""
    from sample import generate_text
    from tokenizer import load_tokenizer
    tokenizer = load_tokenizer({"name": "char", "chars": "abcdefgh \n"})
    model = GPT(tiny_config(vocab_size=tokenizer.vocab_size)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # peaked predictions: greedy tokens depend on the context
    rng = np.random.default_rng(fresh_seed())
    prompt = "".join(rng.choice(list("abcdefgh \n"), size=3 * model.config.block_size))
    seen, generate = [], model.generate

    def recording_generate(idx, *args, **kwargs):
        seen.append(idx.clone())
        return generate(idx, *args, **kwargs)

    model.generate = recording_generate
    text = generate_text(model, tokenizer, prompt, 20, temperature=0, top_k=0, top_p=1.0, device="cpu")
    del model.generate
    idx = torch.tensor([tokenizer.encode(prompt)])
    assert seen[0].tolist() == [tokenizer.encode(prompt)[-model.config.block_size:]]  # what the model was given
    tokens = torch.cat(list(model.generate(idx, 20, temperature=0, use_cache=False,
                                           eot_token=tokenizer.eot_token)), dim=1)[0].tolist()
    expected = tokenizer.decode(tokens[:tokens.index(tokenizer.eot_token)] if tokenizer.eot_token in tokens else tokens)
    assert text == expected
