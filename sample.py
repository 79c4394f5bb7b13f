"""Generate text from a trained model, streaming tokens to the terminal as they come.

    python sample.py --model=out-shakespeare-char
    python sample.py --model=out --start="To be, or not" --num_samples=3 --max_new_tokens=200
    python sample.py --model=path/to/hf-gpt2 --start=FILE:prompt.txt --temperature=0   # greedy
--model takes one of our checkpoints (a .pt file, or an out_dir with best.pt / last.pt) or a
Hugging Face GPT-2 folder (config.json + model.safetensors or pytorch_model.bin).
"""

import sys

import torch

from configurator import config_from_globals

# -----------------------------------------------------------------------------
model = "out"  # checkpoint file, out_dir, or Hugging Face GPT-2 folder
start = "\n"  # the prompt; FILE:path reads it from a file
num_samples = 3
max_new_tokens = 500
temperature = 0.8  # 0 = greedy; below 1 is more conservative, above 1 more random
top_k = 200  # keep only the k most likely tokens (0 = off)
top_p = 1.0  # nucleus sampling: keep the smallest set of tokens holding this probability (1.0 = off)
seed = 1337
device = "auto"
dtype = "auto"  # 'auto' (bfloat16 on CUDA where supported, else float32), 'float32', 'bfloat16', 'float16'
attention = "auto"
use_cache = True  # KV cache: each new token costs one position's work (on a GPU, one replayed CUDA graph)
compile = False  # GPU: torch.compile the one-token step (a slower start, faster tokens: BENCHMARKS.md, inference)
compile_mode = "default"  # with compile: one of model.DECODE_COMPILE_MODES (what each costs and gains is noted there)
DEFAULTS = config_from_globals(globals())
# -----------------------------------------------------------------------------


def read_prompt(start):
    if start.startswith("FILE:"):
        path = start[len("FILE:"):]
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            raise SystemExit(f"error: cannot read prompt file {path!r}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise SystemExit(f"error: prompt file {path!r} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    return start


def generate_text(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, device,
                  use_cache=True, generator=None, on_text=None, decoder=None):
    """Generate one sample for `prompt`; returns the new text. `on_text(piece)` is called as text
    arrives (decoding the whole tail each time, so multi-byte characters split over tokens print right).
    `decoder` (a model.Decoder for one row) carries the KV cache and recorded CUDA graphs from sample to sample."""
    prompt_ids = tokenizer.encode(prompt) or [tokenizer.eot_token]  # GPT-2's convention: empty starts a document
    block_size = model.config.block_size
    idx = torch.tensor([prompt_ids[-block_size:]], dtype=torch.long, device=device)
    new_ids, printed = [], ""
    for token in model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k or None,
                                top_p=top_p if top_p < 1 else None, eot_token=tokenizer.eot_token,
                                use_cache=use_cache, generator=generator, decoder=decoder):
        token = int(token[0, 0])
        if token == tokenizer.eot_token:
            break
        new_ids.append(token)
        text = tokenizer.decode(new_ids)
        if on_text is not None and not text.endswith("\ufffd"):  # wait for the rest of a split character
            on_text(text[len(printed):])
            printed = text
    text = tokenizer.decode(new_ids)
    if on_text is not None and len(text) > len(printed):
        on_text(text[len(printed):])
    return text


def main(config):
    from checkpoint import load_model
    from model import Decoder, check_decode_compile_mode, check_sampling
    from train import resolve_device_and_dtype

    # Everything that can be wrong with the settings, the model or the prompt fails here, in one line, before
    # anything is printed; errors while generating are bugs and keep their traceback.
    try:
        if not 0 <= config["seed"] < 2**63:  # what torch's generators take
            raise ValueError(f"seed must be in [0, 2**63), got {config['seed']}")
        torch.manual_seed(config["seed"])
        check_decode_compile_mode(config["compile_mode"])
        check_sampling(config["temperature"], config["top_k"], config["top_p"])
        for key in ("num_samples", "max_new_tokens"):  # negative would print nothing (or the prompt) and "succeed"
            if config[key] < 0:
                raise ValueError(f"{key} must be 0 or more, got {config[key]}")
        device, dtype = resolve_device_and_dtype(config["device"], config["dtype"])
        model, tokenizer, _ = load_model(config["model"], device, attention=config["attention"])
        prompt = read_prompt(config["start"])
        tokenizer.encode(prompt)  # characters the vocabulary cannot spell
    except (FileNotFoundError, KeyError, ValueError) as e:  # ValueError: ours (CheckpointError, TokenizerError, ...)
        raise SystemExit(f"error: {e}") from None
    if dtype != "float32":
        model.to(getattr(torch, dtype))
    generator = torch.Generator(device=device).manual_seed(config["seed"])
    decoder = Decoder(model, 1, compile=config["compile"], compile_mode=config["compile_mode"]) \
        if config["use_cache"] else None
    for i in range(config["num_samples"]):
        sys.stdout.write(prompt)
        generate_text(model, tokenizer, prompt, config["max_new_tokens"], config["temperature"], config["top_k"],
                      config["top_p"], device, config["use_cache"], generator, decoder=decoder,
                      on_text=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
        sys.stdout.write("\n---------------\n")
        sys.stdout.flush()


if __name__ == "__main__":
    from configurator import load_config, quiet_broken_pipe
    with quiet_broken_pipe():  # `python sample.py | head` stops the stream without a traceback
        try:
            main(load_config(DEFAULTS, sys.argv[1:]))
        except KeyboardInterrupt:  # Ctrl-C is how a long stream is stopped: no traceback, the shell's usual status
            print("\ninterrupted", file=sys.stderr)
            raise SystemExit(130) from None
