"""Checkpoint I/O, written once for every script.

- `save_checkpoint(state, path)`: atomic (temp file, fsync, rename), so a crash or kill -9 at any
  moment leaves either the previous complete file or the new complete file, never half of one;
  `atomic_write` does the same for any file (eval.py's reports, bench.py's JSON).
- `load_checkpoint(path)`: `torch.load(weights_only=True)`, so a checkpoint cannot run code.
- `load_model(source, device)`: a model ready for inference from our checkpoint (a .pt file or
  an out_dir holding best.pt / last.pt) or from a Hugging Face GPT-2 directory.

Export one of our checkpoints as a Hugging Face GPT-2 folder (config.json + model.safetensors):
    python checkpoint.py --model=out-shakespeare-char --export_hf=hf-shakespeare-char
"""

import errno
import json
import os

import torch

from configurator import InputError
from model import GPT, GPTConfig
from tokenizer import load_tokenizer


TEMP_SUFFIX = r"\.tmp\.(\d+)"  # what atomic_write adds to a file's name for its temp file: ".tmp." and the writer's PID


def atomic_write(path, write):
    """Call write(binary_file) on a temp file, fsync it, then rename it to `path`: readers (and a crash or
    kill -9 at any moment) see the previous complete file or the new complete file, never half of one."""
    # a rename would replace a link, a device (--json=/dev/stdout) or a pipe rather than write into it: a link is
    # followed to its file, anything else that is not a file is refused
    path = os.path.realpath(path)
    if os.path.exists(path) and not os.path.isfile(path):
        raise InputError(f"{path} exists and is not a regular file; write to a file path instead")
    # a temp file per process (two processes may write one report), beside `path` so that the rename is atomic;
    # a process killed mid-write leaves its temp file behind
    tmp_path = f"{path}.tmp.{os.getpid()}"  # as TEMP_SUFFIX says, which finds those a killed writer left
    try:
        with open(tmp_path, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)  # atomic on POSIX
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    # make the rename itself durable
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def unwritable_folder(folder):
    """Why `folder` cannot be written into, or None: an existing file at it or above it (os.makedirs would fail), or
    a nearest existing folder this user may not write in. Scripts check this before their work, so that a wrong
    output path fails in a second and not at the end, losing the results."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):  # False also where a parent is a file
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        return f"{path} is a file, not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return None


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk, a lost mount); the message names the file and the fix."""


def _os_error_behind(error):
    """The OSError that caused `error`, or None: torch.save turns a failed write of its file into a RuntimeError
    ("unexpected pos ...") raised while handling the OSError, so the reason is in the exception's context."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def _file_identity(path):
    return os.stat(path).st_ino if os.path.isfile(path) else None


def save_checkpoint(state, path):
    before = _file_identity(path)
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as e:
        os_error = _os_error_behind(e)
        if os_error is None:  # torch's own failure, not the disk's: keep its traceback
            raise
        # atomic_write removed its temp file; `path` changed only if the failure came after the rename
        after = _file_identity(path)
        kept = ("no checkpoint was written" if after is None else
                "the previous checkpoint there is intact" if after == before else
                "the new checkpoint is in place, but its folder could not be synced")
        full = os_error.errno in (errno.ENOSPC, errno.EDQUOT)
        fix = "free some space or choose another --out_dir" if full else "choose another --out_dir"
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {os_error.strerror or os_error}; {kept}; "
                                   f"{fix}") from None


class CheckpointError(InputError):
    """A file that is not a checkpoint we can read; the message names it."""


def load_checkpoint(path, map_location="cpu"):
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, foreign or corrupt files fail in many ways deep inside unpickling
        # not torch's own message: for a file that is no checkpoint it suggests loading it unsafely
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}); point to a best.pt / "
                              f"last.pt written by train.py") from None
    missing = [key for key in ("model_args", "model", "tokenizer") if key not in checkpoint] if isinstance(
        checkpoint, dict) else ["model_args"]
    if missing:  # e.g. a bare state dict saved by other code
        raise CheckpointError(f"{path} is not a train.py checkpoint (no '{missing[0]}'); point to a best.pt / "
                              f"last.pt written by train.py")
    return checkpoint


def find_checkpoint(source):
    """Resolve an out_dir to its checkpoint file (`best.pt`, else `last.pt`); files pass through."""
    if os.path.isfile(source):
        return source
    for name in ("best.pt", "last.pt"):
        path = os.path.join(source, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no checkpoint at {source}: expected a .pt file or a folder with best.pt or last.pt "
                            f"(train one with `python train.py`)")


def clean_state_dict(state_dict):
    """Strip the prefixes torch.compile (`_orig_mod.`) and DDP (`module.`) add to parameter names, in any order
    (train.py saves the bare model; this guards a checkpoint saved from a wrapped one)."""
    out = {}
    for name, tensor in state_dict.items():
        while name.startswith(("_orig_mod.", "module.")):
            name = name.split(".", 1)[1]
        out[name] = tensor
    return out


def model_from_checkpoint(checkpoint, attention="auto"):
    """The GPT a train.py checkpoint holds, on the CPU, with this run's attention setting."""
    model = GPT(GPTConfig.from_dict(dict(checkpoint["model_args"], attention=attention)))
    model.load_state_dict(clean_state_dict(checkpoint["model"]))
    return model


def load_model(source, device="cpu", attention="auto"):
    """(model in eval mode on `device`, tokenizer, checkpoint dict or None) from our checkpoint
    or a Hugging Face GPT-2 directory."""
    if os.path.isdir(source) and os.path.isfile(os.path.join(source, "config.json")):
        try:
            model = GPT.from_hf_dir(source, attention=attention)
        except json.JSONDecodeError as e:  # a ValueError, but its message names no file
            raise CheckpointError(f"{os.path.join(source, 'config.json')} is not valid JSON ({e}); "
                                  f"re-export or re-download the folder") from None
        tokenizer, checkpoint = load_tokenizer({"name": "gpt2"}), None
        if model.config.vocab_size < tokenizer.vocab_size:
            raise CheckpointError(f"{source} has vocab_size {model.config.vocab_size}, but a Hugging Face folder is "
                                  f"read with the GPT-2 tokenizer ({tokenizer.vocab_size} tokens); exported from a "
                                  f"char model? Use the train.py checkpoint it came from")
    else:
        checkpoint = load_checkpoint(find_checkpoint(source))
        model = model_from_checkpoint(checkpoint, attention)
        tokenizer = load_tokenizer(checkpoint["tokenizer"])
    model.to(device).eval()
    return model, tokenizer, checkpoint


def main(argv):
    """Export a checkpoint as a Hugging Face GPT-2 folder (the command in this module's docstring)."""
    from configurator import load_config
    config = load_config({
        "model": "out",  # checkpoint file, out_dir, or Hugging Face GPT-2 folder
        "export_hf": "",  # write the model here as a Hugging Face GPT-2 folder (config.json + model.safetensors)
        "overwrite": False,  # replace an earlier export in export_hf (as train.py's --overwrite does for a run)
    }, argv)
    folder = config["export_hf"]
    if not folder:
        raise SystemExit("error: nothing to do; pass --export_hf=FOLDER to write the model as a Hugging Face GPT-2 folder")
    # checked before loading anything: a typo must not cost an earlier export, nor end in a traceback
    if problem := unwritable_folder(folder):
        raise SystemExit(f"error: --export_hf={folder}: {problem}; pass a new or existing folder you can write in")
    if any(os.path.exists(os.path.join(folder, name)) for name in ("best.pt", "last.pt")):
        # sample.py and eval.py read a folder with config.json as a Hugging Face one: the run would be hidden
        raise SystemExit(f"error: {folder} holds a training run (best.pt / last.pt); export into another folder, "
                         f"e.g. --export_hf={os.path.normpath(folder)}-hf")
    existing = [name for name in ("config.json", "model.safetensors", "pytorch_model.bin")
                if os.path.exists(os.path.join(folder, name))]
    if existing and not config["overwrite"]:
        raise SystemExit(f"error: {folder} already holds a model ({', '.join(existing)}); pass --overwrite=True to "
                         f"replace it, or choose another --export_hf folder")
    try:
        model, tokenizer, _ = load_model(config["model"])
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise SystemExit(f"error: {e}") from None
    if tokenizer.name != "gpt2":
        print(f"warning: the model uses the {tokenizer.name} tokenizer; Hugging Face tools will assume GPT-2's")
    model.export_hf(folder)
    print(f"wrote {folder}/config.json and model.safetensors")


if __name__ == "__main__":
    import sys

    from configurator import quiet_broken_pipe
    with quiet_broken_pipe():
        main(sys.argv[1:])
