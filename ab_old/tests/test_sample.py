"""sample.py: streams text from our checkpoints and Hugging Face folders; prompts; errors."""

import pytest

from conftest import TINY_TRAIN_FLAGS, run_script


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
    assert first == second and first.startswith("KING:\n")


def test_samples_from_a_hugging_face_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=2)  # the GPT-2 vocabulary
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    out = sample(tmp_path, "--start=Hello world", "--num_samples=1", "--max_new_tokens=5").stdout
    assert out.startswith("Hello world")


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
    import torch
    from checkpoint import load_model
    run_script(["checkpoint.py", f"--model={tiny_checkpoint}", f"--export_hf={tmp_path / 'hf'}"])
    ours, _, _ = load_model(tiny_checkpoint)
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    idx = torch.randint(0, ours.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], rtol=1e-4, atol=1e-4)
