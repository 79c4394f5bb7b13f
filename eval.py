"""Evaluate a GPT: loss / perplexity / bits-per-byte, HellaSwag and LAMBADA, plus a report.

    python eval.py --model=out-shakespeare-char --tasks=loss
    python eval.py --model=out-shakespeare-char --tasks=loss --text_file=some.txt --stride=128
    python eval.py --model=path/to/hf-gpt2 --tasks=hellaswag,lambada --device=cuda \\
        --hellaswag_path=hellaswag_val.jsonl --lambada_path=lambada_openai_test.jsonl

`--model` is one of our checkpoints (a .pt file, or an out_dir holding best.pt / last.pt) or a
Hugging Face GPT-2 folder (config.json + model.safetensors). Nothing is downloaded: benchmark files
are paths you pass. The results go to `report_dir` (default: the checkpoint's out_dir) as
report.md + report.json, with loss_curves.png drawn from the run's metrics.jsonl.

What is measured, exactly
- loss: mean next-token cross-entropy (nats) over a token stream: a prepared split (prepare.py) or
  a raw text file tokenized here. Sliding windows of block_size tokens advance by `stride`
  (default block_size // 2), and each token is scored exactly once, in the first window where it
  has at least block_size - stride tokens of context (the usual Hugging Face sliding-window
  perplexity). The tokenizer's end-of-text token is put in front when the stream does not start
  with one, so the first token of the text is scored too. perplexity = exp(loss);
  bits_per_byte = summed loss / ln 2 / UTF-8 bytes of the scored text (EOT tokens count 0 bytes).
  For a trained model this is usually a little lower than train.py's val loss, which averages
  random windows whose early tokens see little context.
- hellaswag (completion style): for each item, the log-likelihood of each ending (tokenized as
  " " + ending, as lm-evaluation-harness and llm.c do) after the context. Three accuracies:
    acc             argmax of the summed log-prob of the ending;
    acc_norm        argmax of the mean log-prob per ending token (llm.c's normalization; the
                    GPT-3 paper also normalizes per token). Compare with llm.c's 0.2955.
    acc_norm_chars  argmax of the summed log-prob / len(ending) in characters (lm-evaluation-
                    harness's `acc_norm`: `completion_len = len(choice)`). Compare with 0.3114.
  The file may be the lm-eval-preprocessed one (ctx, endings, label) or the official raw one
  (activity_label, ctx_a, ctx_b, endings, label), cleaned here as lm-eval's preprocess does.
- lambada (lambada_openai): acc = greedy decoding reproduces every token of the target word
  (argmax at each target position given the true prefix: lm-eval's `is_greedy`), perplexity =
  exp(-mean over passages of the target's total log-likelihood) (lm-eval's `perplexity`
  aggregation, `math.exp(-mean(items))` in lm_eval/api/metrics.py).
Sequences longer than block_size keep their right-most tokens (as lm-eval does).

Published numbers drawn or quoted in the report (sources):
- GPT-2 124M HellaSwag val, completion style: acc 0.2859, acc_norm 0.2955 (llm.c,
  dev/data/hellaswag.py docstring; llm.c scored the raw `ctx` without the activity label);
  lm-evaluation-harness: acc 0.2892, acc_norm 0.3114 (same docstring). GPT-3 Small (125M) 0.337
  (Brown et al. 2020, "Language Models are Few-Shot Learners", Table H.1, zero-shot). Chance 0.25.
- GPT-2 124M LAMBADA (lambada_openai, lm-eval): acc 0.3256, perplexity 40.06
  (EleutherAI/lm-evaluation-harness issue #2159).
- GPT-2 124M OpenWebText val loss 3.12 (nanoGPT README, "baselines"); ~2.85 after fine-tuning on
  OWT (same section). nanoGPT's train_shakespeare_char: best val loss 1.4697 (nanoGPT README).

For training loops: `load_hellaswag`, `hellaswag_accuracy`, `load_lambada`, `lambada_metrics`,
`loss_metrics` are importable without side effects.
"""

import datetime
import json
import math
import os
import re
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

from checkpoint import atomic_write, unwritable_folder
from configurator import InputError, config_from_globals

# -----------------------------------------------------------------------------
# config defaults; config/*.py files and --key=value flags override them
model = "out"  # our checkpoint (.pt) or out_dir, or a Hugging Face GPT-2 folder
tasks = "loss"  # comma-separated: loss, hellaswag, lambada
# loss
data_dir = ""  # a folder written by prepare.py; '' = the checkpoint's training data_dir
split = "val"
text_file = ""  # score a raw UTF-8 text file instead of a prepared split
stride = 0  # tokens each window advances; 0 = block_size // 2
max_tokens = 0  # score at most this many tokens (0 = all)
# benchmarks
hellaswag_path = ""  # HellaSwag .jsonl (preprocessed: ctx/endings/label, or the official raw file)
lambada_path = ""  # lambada_openai .jsonl (text, context, target)
limit = 0  # evaluate only the first N items of each benchmark (0 = all)
# system
batch_size = 0  # sequences per forward pass (4 per HellaSwag item); 0 = 128 on GPU, 16 on CPU
device = "auto"  # 'auto', 'cpu', 'cuda', 'cuda:1', ...
dtype = "auto"  # 'auto' (bfloat16 autocast on CUDA, float32 elsewhere), 'float32', 'bfloat16', 'float16'
attention = "sdpa"  # torch's attention: no per-shape kernel compilation, and independent of our own kernel
# (the one under test in training); 'auto' / 'triton' / 'reference' as in model.py
report_dir = ""  # '' = the checkpoint's out_dir (eval-<name> for a Hugging Face folder)
progress = True  # tqdm progress bars
DEFAULTS = config_from_globals(globals())
# -----------------------------------------------------------------------------

TASKS = ("loss", "hellaswag", "lambada")
LN2 = math.log(2)
# the loss task's windows are block_size long: cap a forward pass at this many tokens, because the logits
# alone take tokens * vocab_size * 2 bytes (32k tokens * 50257 * bf16 = 3.3 GB)
LOSS_TOKENS_PER_FORWARD = 32768

# Published numbers; "metric" says which of our results each one is comparable with.
REFERENCES = {
    "hellaswag_chance": dict(task="hellaswag", metric="acc_norm", value=0.25, model="chance (4 endings)",
                             source="1 / 4"),
    "hellaswag_gpt2_acc_norm": dict(task="hellaswag", metric="acc_norm", value=0.2955, model="GPT-2 124M",
                                    source="llm.c dev/data/hellaswag.py (completion style, per-token normalization)"),
    "hellaswag_gpt3_acc_norm": dict(task="hellaswag", metric="acc_norm", value=0.337, model="GPT-3 Small 125M",
                                    source="Brown et al. 2020, Table H.1 (zero-shot, per-token normalization)"),
    "hellaswag_gpt2_acc": dict(task="hellaswag", metric="acc", value=0.2859, model="GPT-2 124M",
                               source="llm.c dev/data/hellaswag.py (completion style)"),
    "hellaswag_gpt2_acc_lm_eval": dict(task="hellaswag", metric="acc", value=0.2892, model="GPT-2 124M",
                                       source="lm-evaluation-harness, as quoted in llm.c dev/data/hellaswag.py"),
    "hellaswag_gpt2_acc_norm_chars": dict(task="hellaswag", metric="acc_norm_chars", value=0.3114,
                                          model="GPT-2 124M",
                                          source="lm-evaluation-harness acc_norm, as quoted in llm.c "
                                                 "dev/data/hellaswag.py"),
    "lambada_gpt2_acc": dict(task="lambada", metric="acc", value=0.3256, model="GPT-2 124M",
                             source="lm-evaluation-harness lambada_openai (EleutherAI/lm-evaluation-harness#2159)"),
    "lambada_gpt2_perplexity": dict(task="lambada", metric="perplexity", value=40.06, model="GPT-2 124M",
                                    source="lm-evaluation-harness lambada_openai "
                                           "(EleutherAI/lm-evaluation-harness#2159)"),
    "owt_gpt2_val_loss": dict(task="loss", metric="loss", value=3.12, model="GPT-2 124M (OpenAI weights)",
                              source="nanoGPT README, baselines (OpenWebText val; random-window estimate like "
                                     "train.py's, full-context loss comes out lower)", data="openwebtext"),
    "owt_gpt2_finetuned_val_loss": dict(task="loss", metric="loss", value=2.85,
                                        model="GPT-2 124M fine-tuned on OpenWebText",
                                        source="nanoGPT README, baselines (~2.85)", data="openwebtext"),
    "tinyshakespeare_char_val_loss": dict(task="loss", metric="loss", value=1.4697,
                                          model="nanoGPT train_shakespeare_char (10.7M)",
                                          source="nanoGPT README, quick start (best val loss; random-window estimate "
                                                 "like train.py's)",
                                          data="tinyshakespeare_char"),
}


class EvalError(InputError):
    """Bad evaluation input (a file, a field, a task); the message says what and how to fix it."""


# -----------------------------------------------------------------------------
# device and precision

def eval_autocast(device, dtype=None):
    """train.autocast_context for a dtype that may be None or "auto": bf16 autocast on CUDA by default (as training
    runs); float32 elsewhere or when asked."""
    from train import autocast_context as train_autocast, resolve_device_and_dtype
    return train_autocast(device, resolve_device_and_dtype(device, dtype or "auto")[1])


def _progress(iterable, enabled, desc, total=None):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, file=sys.stderr)


# -----------------------------------------------------------------------------
# scoring continuations: the core of HellaSwag and LAMBADA

def _prepare_request(context, continuation, block_size):
    """(input ids, scored continuation ids, logit position of the first scored id).

    Like lm-eval, a pair longer than block_size + 1 keeps its right-most tokens; if the
    continuation alone is that long, only its last block_size tokens are scored."""
    if len(continuation) == 0:
        raise EvalError("a continuation has no tokens")
    if len(context) == 0:
        raise EvalError("a context has no tokens; give every continuation at least one token of context")
    full = (list(context) + list(continuation))[-(block_size + 1):]
    n_scored = min(len(continuation), len(full) - 1)
    inputs = full[:-1]
    # the logits at position i predict full[i + 1], so the last n_scored logits score the continuation
    return inputs, full[-n_scored:], len(inputs) - n_scored


@torch.no_grad()
def score_continuations(model, requests, device, batch_size=64, dtype=None, progress=False, desc="scoring"):
    """Log-likelihood of each (context_ids, continuation_ids) pair under `model`.

    Returns numpy arrays: logprob (float64, summed over the continuation), n_tokens (tokens scored)
    and greedy (True when the argmax at every continuation position is the continuation's token).
    Sequences are sorted by length and padded on the right, so causal attention never lets a real
    token see padding and each batch pads only to its own longest row."""
    block_size = model.config.block_size
    prepared = [_prepare_request(c, t, block_size) for c, t in requests]
    n = len(prepared)
    order = sorted(range(n), key=lambda i: len(prepared[i][0]), reverse=True)
    sums, misses, counts = [], [], []
    was_training = model.training
    model.eval()
    try:
        batches = range(0, n, batch_size)
        for start in _progress(batches, progress, desc, total=len(batches)):
            batch = order[start:start + batch_size]
            # widths rounded up to a multiple of 16: a handful of distinct shapes instead of one per length
            # (fewer kernel selections / compilations on GPU, tensor-core friendly); the extra right
            # padding is invisible to the real tokens under causal attention
            width = min(-(-len(prepared[batch[0]][0]) // 16) * 16, block_size)
            x = np.zeros((len(batch), width), dtype=np.int64)
            rows, cols, targets = [], [], []
            for r, i in enumerate(batch):
                inputs, scored, first = prepared[i]
                x[r, :len(inputs)] = inputs
                rows.append(np.full(len(scored), r))
                cols.append(np.arange(first, first + len(scored)))
                targets.append(scored)
            rows = torch.from_numpy(np.concatenate(rows)).to(device)
            cols = torch.from_numpy(np.concatenate(cols)).to(device)
            targets = torch.from_numpy(np.concatenate(targets).astype(np.int64)).to(device)
            with eval_autocast(device, dtype):
                logits, _ = model(torch.from_numpy(x).to(device))
            picked = logits[rows, cols].float()  # only the continuation positions: (tokens, vocab)
            token_logprob = F.log_softmax(picked, dim=-1).gather(1, targets[:, None]).squeeze(1)
            wrong = (picked.argmax(dim=-1) != targets).to(torch.int32)
            sums.append(torch.zeros(len(batch), dtype=torch.float64, device=device)
                        .index_add_(0, rows, token_logprob.double()))
            misses.append(torch.zeros(len(batch), dtype=torch.int32, device=device).index_add_(0, rows, wrong))
            counts.append(torch.zeros(len(batch), dtype=torch.int32, device=device)
                          .index_add_(0, rows, torch.ones_like(wrong)))
    finally:
        model.train(was_training)
    logprob, n_tokens, greedy = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    if n:
        idx = np.array(order)
        logprob[idx] = torch.cat(sums).cpu().numpy()  # one transfer at the end: no per-batch sync
        n_tokens[idx] = torch.cat(counts).cpu().numpy()
        greedy[idx] = torch.cat(misses).cpu().numpy() == 0
    return {"logprob": logprob, "n_tokens": n_tokens, "greedy": greedy}


def _encode(tokenizer, text, where):
    try:
        return tokenizer.encode(text)
    except ValueError as e:
        raise EvalError(f"{where}: the {tokenizer.name} tokenizer cannot encode this text ({e}); "
                        f"benchmarks need a tokenizer that covers their text, e.g. gpt2") from None


# -----------------------------------------------------------------------------
# HellaSwag

def clean_hellaswag_text(text):
    """lm-evaluation-harness's HellaSwag `preprocess`: WikiHow markup out, as in its utils.py."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    text = text.replace("  ", " ")
    return text


# Where the benchmark files come from (eval.py never downloads): the test data of the task's own authors.
BENCHMARK_FILES = {
    "hellaswag": "data/hellaswag_val.jsonl of github.com/rowanz/hellaswag",
    "lambada": "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl (OpenAI's LAMBADA, "
               "lm-evaluation-harness's lambada_openai)",
}


def _read_jsonl(path, what):
    if not path:
        raise EvalError(f"{what} needs a file: pass --{what}_path=FILE.jsonl, e.g. {BENCHMARK_FILES[what]}")
    if not os.path.isfile(path):
        raise EvalError(f"{what} file {path} not found; pass an existing .jsonl with --{what}_path=FILE")
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line_number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise EvalError(f"{path} line {line_number} is not JSON ({e.msg}); expected one JSON object "
                                    f"a line") from None
                if not isinstance(row, dict):
                    raise EvalError(f"{path} line {line_number} is not a JSON object")
                rows.append((line_number, row))
    except UnicodeDecodeError:
        raise EvalError(f"{path} is not UTF-8 text; expected a .jsonl file") from None
    if not rows:
        raise EvalError(f"{path} has no items")
    return rows


def load_hellaswag(path, limit=0):
    """HellaSwag items [{"ctx", "endings", "label"}] from a preprocessed or official raw .jsonl file."""
    items = []
    for line_number, row in _read_jsonl(path, "hellaswag"):
        where = f"{path} line {line_number}"
        if all(k in row for k in ("activity_label", "ctx_a", "ctx_b", "endings")):
            # the official raw file: build the context and clean the markup as lm-eval does
            if not all(isinstance(row[k], str) for k in ("activity_label", "ctx_a", "ctx_b")):
                raise EvalError(f"{where}: activity_label, ctx_a and ctx_b must be strings")
            ctx = clean_hellaswag_text(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
            endings = row["endings"]
            if isinstance(endings, list) and all(isinstance(e, str) for e in endings):
                endings = [clean_hellaswag_text(e) for e in endings]
        elif "ctx" in row and "endings" in row:
            ctx, endings = row["ctx"], row["endings"]
        else:
            raise EvalError(f"{where}: a HellaSwag item needs ctx, endings, label (preprocessed) or activity_label, "
                            f"ctx_a, ctx_b, endings, label (official raw); found {sorted(row)}")
        if not isinstance(ctx, str) or not ctx:
            raise EvalError(f"{where}: ctx must be a non-empty string")
        if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) and e for e in endings):
            raise EvalError(f"{where}: endings must be a list of at least 2 non-empty strings")
        label = row.get("label")
        if isinstance(label, str) and label.strip().isdigit():
            label = int(label)
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(endings):
            raise EvalError(f"{where}: label must be an ending index 0..{len(endings) - 1}, got {label!r} "
                            f"(the HellaSwag test split has no labels; use the validation file)")
        items.append({"ctx": ctx, "endings": endings, "label": label})
        if limit and len(items) >= limit:
            break
    return items


def hellaswag_requests(items, tokenizer):
    """(context_ids, ending_ids) pairs, one per ending, item by item; endings are encoded as " " + ending."""
    requests = []
    for i, item in enumerate(items):
        ctx = _encode(tokenizer, item["ctx"], f"hellaswag item {i}")
        for ending in item["endings"]:
            requests.append((ctx, _encode(tokenizer, " " + ending, f"hellaswag item {i}")))
    return requests


def hellaswag_scores(model, tokenizer, items, device, batch_size=64, dtype=None, progress=False):
    """Per item: the list of ending log-likelihoods and their token counts."""
    scores = score_continuations(model, hellaswag_requests(items, tokenizer), device, batch_size, dtype, progress,
                                 desc="hellaswag")
    out, k = [], 0
    for item in items:
        m = len(item["endings"])
        out.append({"logprob": scores["logprob"][k:k + m], "n_tokens": scores["n_tokens"][k:k + m]})
        k += m
    return out


def hellaswag_accuracy(model, tokenizer, items, device, batch_size=64, dtype=None, progress=False):
    """{"acc", "acc_norm", "acc_norm_chars"} over `items` (see the module docstring for the three).

    For in-training use pass the uncompiled model (varying shapes would recompile). The model's
    train/eval mode is restored on return. dtype None = bf16 autocast on CUDA, float32 elsewhere."""
    if not items:
        raise EvalError("no HellaSwag items to evaluate")
    per_item = hellaswag_scores(model, tokenizer, items, device, batch_size, dtype, progress)
    correct = np.zeros(3)
    for item, s in zip(items, per_item):
        chars = np.array([len(e) for e in item["endings"]], dtype=np.float64)
        predictions = (np.argmax(s["logprob"]), np.argmax(s["logprob"] / s["n_tokens"]), np.argmax(s["logprob"] / chars))
        correct += [p == item["label"] for p in predictions]
    acc, acc_norm, acc_norm_chars = (correct / len(items)).tolist()
    return {"acc": acc, "acc_norm": acc_norm, "acc_norm_chars": acc_norm_chars}


# -----------------------------------------------------------------------------
# LAMBADA

def load_lambada(path, limit=0):
    """LAMBADA passages [{"context", "target"}]; target = " " + last word. Rows need context and
    target, or just text (split at its last space, as lm-eval's lambada_openai does)."""
    items = []
    for line_number, row in _read_jsonl(path, "lambada"):
        where = f"{path} line {line_number}"
        if "context" in row and "target" in row:
            context, target = row["context"], row["target"]
        elif "text" in row:
            text = row["text"]
            if not isinstance(text, str) or " " not in text.strip():
                raise EvalError(f"{where}: text must be a string of at least two words")
            context, last = text.rsplit(" ", 1)
            target = " " + last
        else:
            raise EvalError(f"{where}: a LAMBADA item needs text, or context and target; found {sorted(row)}")
        if not isinstance(context, str) or not isinstance(target, str) or not context or not target.strip():
            raise EvalError(f"{where}: context and target must be non-empty strings")
        items.append({"context": context, "target": target})
        if limit and len(items) >= limit:
            break
    return items


def lambada_metrics(model, tokenizer, items, device, batch_size=64, dtype=None, progress=False):
    """{"acc", "perplexity", "count"} as lm-evaluation-harness's lambada_openai computes them."""
    if not items:
        raise EvalError("no LAMBADA items to evaluate")
    requests = [(_encode(tokenizer, it["context"], f"lambada item {i}"),
                 _encode(tokenizer, it["target"], f"lambada item {i}")) for i, it in enumerate(items)]
    scores = score_continuations(model, requests, device, batch_size, dtype, progress, desc="lambada")
    return {"acc": float(scores["greedy"].mean()), "perplexity": math.exp(-float(scores["logprob"].mean())),
            "count": len(items)}


# -----------------------------------------------------------------------------
# loss, perplexity, bits per byte

def sliding_windows(n_tokens, block_size, stride):
    """Windows (begin, length, first_target) over a stream of n_tokens tokens.

    A window feeds tokens[begin : begin + length] and predicts tokens[begin + 1 : begin + length + 1];
    it scores the targets at indices first_target .. begin + length. Targets 1 .. n_tokens - 1 are
    each scored exactly once, with at least length - stride tokens of context after the first
    window. The last window is moved back to end at the stream's end, so every window is full
    length (one batch shape) and the tail gets more context, not less."""
    if n_tokens < 2:
        raise EvalError(f"need at least 2 tokens to score, got {n_tokens}")
    length = min(block_size, n_tokens - 1)
    stride = min(max(1, stride), length)
    windows, begin, next_target = [], 0, 1
    while next_target <= n_tokens - 1:
        begin = min(begin, n_tokens - 1 - length)
        windows.append((begin, length, next_target))
        next_target = begin + length + 1
        begin += stride
    return windows


@torch.no_grad()
def sliding_window_nll(model, tokens, device, batch_size=64, stride=0, dtype=None, progress=False):
    """Per-target negative log-likelihood (nats, float64) of tokens[1:], with sliding-window context."""
    tokens = np.asarray(tokens, dtype=np.int64)
    block_size = model.config.block_size
    windows = sliding_windows(len(tokens), block_size, stride or max(1, block_size // 2))
    batch_size = max(1, min(batch_size, LOSS_TOKENS_PER_FORWARD // windows[0][1]))
    nll = np.full(len(tokens) - 1, np.nan)
    was_training = model.training
    model.eval()
    try:
        batches = range(0, len(windows), batch_size)
        for start in _progress(batches, progress, "loss", total=len(batches)):
            batch = windows[start:start + batch_size]
            length = batch[0][1]
            x = np.stack([tokens[b:b + length] for b, _, _ in batch])
            y = np.stack([tokens[b + 1:b + length + 1] for b, _, _ in batch])
            with eval_autocast(device, dtype):
                logits, _ = model(torch.from_numpy(x).to(device))
            y = torch.from_numpy(y).to(device)
            # row by row: a float32 copy of a whole batch of logits would be B * T * vocab * 4 bytes
            rows = [F.cross_entropy(logits[r].float(), y[r], reduction="none") for r in range(len(batch))]
            rows = torch.stack(rows).double().cpu().numpy()
            for (b, length, first), row in zip(batch, rows):
                # target index j sits at row position j - b - 1
                nll[first - 1:b + length] = row[first - b - 1:]
    finally:
        model.train(was_training)
    assert not np.isnan(nll).any(), "sliding windows left a token unscored"
    return nll


def count_text_bytes(tokenizer, tokens):
    """UTF-8 bytes of the text `tokens` decode to; end-of-text tokens carry no text and count 0."""
    tokens = np.asarray(tokens, dtype=np.int64)
    runs = [tokens]
    if tokenizer.eot_token is not None:
        runs = np.split(tokens, np.flatnonzero(tokens == tokenizer.eot_token))
        runs = [r[1:] if len(r) and r[0] == tokenizer.eot_token else r for r in runs]
    # tiktoken gives exact bytes even when a run ends inside a multi-byte character
    decode_bytes = getattr(getattr(tokenizer, "encoding", None), "decode_bytes", None)
    total = 0
    for run in runs:
        if len(run):
            ids = run.tolist()
            total += len(decode_bytes(ids)) if decode_bytes else len(tokenizer.decode(ids).encode("utf-8"))
    return total


def _with_leading_eot(tokens, tokenizer, vocab_size):
    """Put end-of-text in front (if the model knows it), so the stream's first real token is scored too."""
    eot = tokenizer.eot_token
    if eot is None or eot >= vocab_size or (len(tokens) and tokens[0] == eot):
        return np.asarray(tokens, dtype=np.int64)
    return np.concatenate([[eot], np.asarray(tokens, dtype=np.int64)])


def text_file_tokens(path, tokenizer, vocab_size):
    if not os.path.isfile(path):
        raise EvalError(f"text file {path} not found; pass an existing UTF-8 file with --text_file=FILE")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise EvalError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        tokens = tokenizer.encode_array(text)
    except ValueError as e:
        raise EvalError(f"{path}: the model's {tokenizer.name} tokenizer cannot encode it ({e})") from None
    return _with_leading_eot(tokens, tokenizer, vocab_size)


def split_tokens(data_dir, split_name, tokenizer, vocab_size, max_tokens=0):
    """The split's token stream (all shards in order), cut to max_tokens targets if set."""
    from prepare import open_split, read_meta
    from tokenizer import describe_spec
    try:
        meta = read_meta(data_dir)
    except (OSError, ValueError) as e:
        raise EvalError(f"cannot read prepared data in {data_dir}: {e}") from None
    data, ours = meta.get("tokenizer"), tokenizer.spec()
    if data != ours:
        raise EvalError(f"{data_dir} was prepared with tokenizer {describe_spec(data, ours)} but the model uses "
                        f"{describe_spec(ours, data)}; evaluate on data prepared with the model's tokenizer")
    if split_name not in meta.get("splits", {}):
        raise EvalError(f"{data_dir} has no split {split_name!r}; it has {sorted(meta.get('splits', {}))}")
    try:
        shards = open_split(data_dir, split_name)
    except (OSError, ValueError) as e:
        raise EvalError(f"cannot read the {split_name} split of {data_dir}: {e}") from None
    parts, have = [], 0
    want = max_tokens + 1 if max_tokens else None
    for shard in shards:
        take = len(shard) if want is None else min(len(shard), want - have)
        parts.append(np.asarray(shard[:take], dtype=np.int64))
        have += take
        if want is not None and have >= want:
            break
    tokens = _with_leading_eot(np.concatenate(parts) if parts else np.zeros(0, np.int64), tokenizer, vocab_size)
    return tokens[:want] if want else tokens


def loss_metrics(model, tokenizer, tokens, device, batch_size=64, stride=0, dtype=None, progress=False):
    """{"loss", "perplexity", "bits_per_byte", "tokens", "bytes", ...} over tokens[1:]."""
    nll = sliding_window_nll(model, tokens, device, batch_size, stride, dtype, progress)
    n_bytes = count_text_bytes(tokenizer, tokens[1:])
    total = float(nll.sum())
    block_size = model.config.block_size
    stride_used = min(stride or max(1, block_size // 2), block_size)
    return {"loss": total / len(nll), "perplexity": math.exp(total / len(nll)),
            "bits_per_byte": total / LN2 / n_bytes if n_bytes else float("nan"),
            "tokens": int(len(nll)), "bytes": int(n_bytes), "block_size": block_size, "stride": stride_used}


# -----------------------------------------------------------------------------
# the report: metrics.jsonl curves, published references, markdown + json

def read_metrics(path):
    """train/eval/config records from train.py's metrics.jsonl. A resumed run repeats steps: the
    last record of a step wins. Unreadable lines (a write cut off by a kill) are skipped."""
    train, evals, config, skipped = {}, {}, None, 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
                kind, step = record.get("type"), record.get("step")
            except (json.JSONDecodeError, AttributeError):
                skipped += 1
                continue
            if kind == "train" and isinstance(record.get("loss"), (int, float)):
                train[step] = record
            elif kind == "eval":
                evals[step] = record
            elif kind == "config":
                config = record.get("config")
    return {"train": [train[s] for s in sorted(train)], "eval": [evals[s] for s in sorted(evals)],
            "config": config, "skipped_lines": skipped}


def data_kind(data_dir, tokenizer_spec):
    """'openwebtext', 'tinyshakespeare_char' or None: which published loss baselines can apply."""
    name = os.path.basename(os.path.normpath(data_dir or "")).lower()
    tokenizer_name = (tokenizer_spec or {}).get("name")
    if tokenizer_name == "gpt2" and ("openwebtext" in name or name in ("owt", "openwebtext")):
        return "openwebtext"
    if tokenizer_name == "char" and "tinyshakespeare" in name:  # nanoGPT's corpus, not prepare.py's 38 plays
        return "tinyshakespeare_char"
    return None


def applicable_references(task, kind=None):
    """The published numbers for `task` that apply to data of this kind (loss baselines are per dataset)."""
    return {key: ref for key, ref in REFERENCES.items()
            if ref["task"] == task and ref.get("data") in (None, kind)}


def plot_curves(metrics, path, kind=None, title="", marker=None):
    """loss_curves.png: train/val loss per step, plus HellaSwag if the run logged it; published
    reference lines only where they apply to this model's data and metric. `marker` = (step, loss,
    label) adds eval.py's own full-context loss of the checkpoint."""
    fig = curves_figure(metrics, kind, title, marker)
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))


def _short_source(ref):
    return ref["source"].split(" (")[0]  # the full source, with its caveats, is in the report's table


def curves_figure(metrics, kind=None, title="", marker=None):
    from matplotlib.figure import Figure  # no pyplot: no global backend state, works headless

    hellaswag = [(r["step"], r) for r in metrics["eval"] if "hellaswag_acc_norm" in r]
    fig = Figure(figsize=(11 if hellaswag else 7, 4.5), layout="constrained")
    axes = fig.subplots(1, 2 if hellaswag else 1, squeeze=False)[0]
    ax = axes[0]
    if metrics["train"]:
        ax.plot([r["step"] for r in metrics["train"]], [r["loss"] for r in metrics["train"]],
                color="tab:blue", alpha=0.35, linewidth=0.8, label="train loss (per step)")
    evals = [r for r in metrics["eval"] if "val_loss" in r]
    if evals:
        steps = [r["step"] for r in evals]
        ax.plot(steps, [r["train_loss"] for r in evals], "o-", color="tab:blue", markersize=3, label="train loss (eval)")
        ax.plot(steps, [r["val_loss"] for r in evals], "o-", color="tab:orange", markersize=3, label="val loss (eval)")
    if marker is not None:
        ax.plot([marker[0]], [marker[1]], "*", color="tab:red", markersize=12, label=marker[2])
    for ref, style in zip(applicable_references("loss", kind).values(), ("--", ":")):
        ax.axhline(ref["value"], color="gray", linestyle=style, linewidth=1,
                   label=f"{ref['model']}: {ref['value']:g} ({_short_source(ref)})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if hellaswag:
        ax = axes[1]
        steps = [s for s, _ in hellaswag]
        ax.plot(steps, [r["hellaswag_acc_norm"] for _, r in hellaswag], "o-", color="tab:green", markersize=3,
                label="acc_norm (per-token)")
        if all("hellaswag_acc" in r for _, r in hellaswag):
            ax.plot(steps, [r["hellaswag_acc"] for _, r in hellaswag], "o-", color="tab:olive", markersize=3,
                    alpha=0.6, label="acc")
        refs = [REFERENCES[k] for k in ("hellaswag_chance", "hellaswag_gpt2_acc_norm", "hellaswag_gpt3_acc_norm")]
        for ref, style in zip(refs, (":", "--", "-.")):
            ax.axhline(ref["value"], color="gray", linestyle=style, linewidth=1,
                       label=f"{ref['model']} acc_norm {ref['value']:g} ({_short_source(ref)})")
        ax.set_xlabel("step")
        ax.set_ylabel("HellaSwag accuracy (subset logged by train.py)")
        ax.set_title("HellaSwag during training")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def _write_atomic(path, text):
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))  # a reader never sees half a report


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


RESULT_NOTES = {
    "loss": "Sliding-window loss: each token scored once with >= block_size - stride tokens of context. "
            "train.py's val loss averages random windows, where early positions see little context, so for a "
            "trained model this number is usually a little lower (and it has no sampling noise). "
            "bits_per_byte = summed nats / ln 2 / UTF-8 bytes of the scored text.",
    "hellaswag": "Completion style, ending = ' ' + ending. acc: summed log-prob. acc_norm: mean log-prob per "
                 "ending token (llm.c's normalization). acc_norm_chars: summed log-prob / characters of the "
                 "ending (lm-evaluation-harness's acc_norm). llm.c's 0.2955 scored the raw ctx (no activity "
                 "label); this file's ctx is lm-eval's, so expect a small difference for the same model.",
    "lambada": "lambada_openai as lm-evaluation-harness scores it: acc = greedy decoding reproduces every target "
               "token; perplexity = exp(-mean over passages of the target's log-likelihood).",
}


def render_markdown(report):
    lines = [f"# Evaluation of `{report['model']}`", ""]
    info = [("model", report["model"]), ("kind", report["model_kind"]), ("step", report.get("step")),
            ("parameters", report.get("parameters")), ("block_size", report["model_args"].get("block_size")),
            ("tokenizer", report["tokenizer"].get("name")), ("device", report["device"]),
            ("dtype", report["dtype"]), ("written", report["written"])]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in info if v is not None] + [""]
    for task in TASKS:
        result = report["results"].get(task)
        if not result:
            continue
        lines += [f"## {task}", "", f"Data: `{result.get('data', '')}`", "",
                  "| metric | this model | published (model, source) |", "|---|---|---|"]
        refs = list(result.get("references", {}).values())
        for key, value in result.items():
            if key in ("data", "references", "seconds", "split") or value is None or isinstance(value, (dict, list)):
                continue
            quoted = "; ".join(f"{r['value']:g} ({r['model']}, {r['source']})" for r in refs if r["metric"] == key)
            lines.append(f"| {key} | {_fmt(value)} | {quoted} |")
        lines += ["", f"{RESULT_NOTES[task]} Took {result.get('seconds', 0):.1f} s.", ""]
    if report.get("plot"):
        lines += ["## Training curves", "", f"![loss curves]({report['plot']})", ""]
        if report.get("plot_note"):
            lines += [report["plot_note"], ""]
    return "\n".join(lines)


def weights_file_identity(source, checkpoint_path):
    """[path, bytes, modification time in ns] of the file the weights came from: what tells two models apart
    when a retrained one replaces an earlier one under the same path."""
    from model import hf_weights_file
    path = checkpoint_path or hf_weights_file(source)
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def write_report(report_dir, report, metrics_path=None):
    """Write report.json, report.md and (when metrics_path exists) loss_curves.png into report_dir.

    Results of other tasks from an earlier run on the same weights file (path, size, modification time) are
    kept, so `--tasks=loss` then `--tasks=hellaswag` gives one report."""
    os.makedirs(report_dir, exist_ok=True)
    json_path = os.path.join(report_dir, "report.json")
    if os.path.isfile(json_path):
        try:
            with open(json_path, encoding="utf-8") as f:
                old = json.load(f)
            same_model = all(old.get(key) == report.get(key) for key in ("model", "step", "weights_file"))
            if same_model:  # the same file, not only the same path: a retrained model's report starts afresh
                report["results"] = {**old.get("results", {}), **report["results"]}
        except (OSError, json.JSONDecodeError):
            pass  # an unreadable old report is simply replaced
    report["plot"] = None
    if metrics_path and os.path.isfile(metrics_path):
        metrics = read_metrics(metrics_path)
        if metrics["train"] or metrics["eval"]:
            config = metrics["config"] or {}
            kind = data_kind(config.get("data_dir") or report.get("train_data_dir"), report["tokenizer"])
            loss = report["results"].get("loss")
            marker = None
            if loss and report.get("step") is not None and loss.get("split") == "val":
                marker = (report["step"], loss["loss"], f"eval.py val loss, full context: {loss['loss']:.4f}")
            plot_curves(metrics, os.path.join(report_dir, "loss_curves.png"), kind,
                        title=f"{os.path.basename(os.path.normpath(report['model']))}: loss", marker=marker)
            report["plot"] = "loss_curves.png"
            if kind is None:
                report["plot_note"] = ("No published loss line drawn: baselines exist for OpenWebText with the GPT-2 "
                                       "tokenizer and for character-level tinyshakespeare only.")
    _write_atomic(json_path, json.dumps(report, indent=2) + "\n")
    _write_atomic(os.path.join(report_dir, "report.md"), render_markdown(report))
    return report


# -----------------------------------------------------------------------------
# command line

def parse_tasks(text):
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise EvalError(f"unknown task {', '.join(unknown) or repr(text)}; choose from {', '.join(TASKS)} "
                        f"(comma-separated, e.g. --tasks=loss,hellaswag)")
    return list(dict.fromkeys(names))


def run(config):
    from train import resolve_device_and_dtype
    task_list = parse_tasks(config["tasks"])
    device, dtype = resolve_device_and_dtype(config["device"], config["dtype"])
    for key in ("limit", "max_tokens", "stride"):
        if config[key] < 0:
            raise EvalError(f"{key} must be 0 or more, got {config[key]}")
    if config["batch_size"] < 0:
        raise EvalError(f"batch_size must be positive (or 0 for automatic), got {config['batch_size']}")
    if config["batch_size"] == 0:
        # the logits are batch * length * vocab: 128 rows of HellaSwag is ~2 GB in bf16 on GPU
        config = dict(config, batch_size=128 if device.startswith("cuda") else 16)
    # read benchmark files before the model: a wrong path or field fails in a second, not after loading
    items = {}
    if "hellaswag" in task_list:
        items["hellaswag"] = load_hellaswag(config["hellaswag_path"], config["limit"])
    if "lambada" in task_list:
        items["lambada"] = load_lambada(config["lambada_path"], config["limit"])
    if "loss" in task_list and config["text_file"] and not os.path.isfile(config["text_file"]):
        raise EvalError(f"text file {config['text_file']} not found; pass an existing UTF-8 file with --text_file=FILE")

    from checkpoint import find_checkpoint, load_model
    source = config["model"]
    if not os.path.exists(source):
        raise EvalError(f"model {source} not found; pass a checkpoint (.pt), an out_dir with best.pt/last.pt, "
                        f"or a Hugging Face GPT-2 folder with --model=PATH")
    is_hf = os.path.isdir(source) and os.path.isfile(os.path.join(source, "config.json"))
    try:
        checkpoint_path = None if is_hf else find_checkpoint(source)
        model_, tokenizer, checkpoint = load_model(source, device, attention=config["attention"])
    except Exception as e:  # a corrupt or foreign file can fail in many ways; say which file, in one line
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EvalError(f"cannot load model {source}: {message}") from None
    train_config = (checkpoint or {}).get("config") or {}
    out_dir = os.path.dirname(os.path.abspath(checkpoint_path)) if checkpoint_path else None
    report_dir = config["report_dir"] or out_dir or f"eval-{os.path.basename(os.path.normpath(source))}"
    if problem := unwritable_folder(report_dir):  # now, not after the tasks ran: their results would be lost
        raise EvalError(f"report_dir {report_dir}: {problem}; pass a folder you can write in with --report_dir=DIR")

    report = {
        "model": source, "model_kind": "huggingface" if is_hf else "checkpoint",
        "checkpoint": checkpoint_path, "weights_file": weights_file_identity(source, checkpoint_path),
        "step": (checkpoint or {}).get("step"),
        "best_val_loss": (checkpoint or {}).get("best_val_loss"),
        "parameters": sum(p.numel() for p in model_.parameters()),
        "model_args": dict(vars(model_.config)), "tokenizer": _tokenizer_summary(tokenizer),
        "train_data_dir": train_config.get("data_dir"),
        "device": device if not device.startswith("cuda") else f"{device} ({torch.cuda.get_device_name(device)})",
        "dtype": dtype, "attention": config["attention"], "config": config,
        "written": datetime.datetime.now().isoformat(timespec="seconds"), "results": {},
    }
    print(f"model {source}: {report['parameters']:,} parameters, block_size {model_.config.block_size}, "
          f"tokenizer {tokenizer.name}, {device}, {dtype}")
    common = dict(device=device, batch_size=config["batch_size"], dtype=dtype, progress=config["progress"])
    for task in task_list:
        t0 = time.time()
        if task == "loss":
            if config["text_file"]:
                data = config["text_file"]
                tokens = text_file_tokens(data, tokenizer, model_.config.vocab_size)
                if config["max_tokens"]:
                    tokens = tokens[:config["max_tokens"] + 1]
                kind = None
            else:
                data_dir_ = config["data_dir"] or train_config.get("data_dir")
                if not data_dir_:
                    raise EvalError("task loss needs data: pass --data_dir=DIR (prepared by prepare.py) or "
                                    "--text_file=FILE")
                data = f"{data_dir_} ({config['split']} split)"
                tokens = split_tokens(data_dir_, config["split"], tokenizer, model_.config.vocab_size,
                                      config["max_tokens"])
                kind = data_kind(data_dir_, tokenizer.spec())
            result = loss_metrics(model_, tokenizer, tokens, stride=config["stride"], **common)
            result["split"] = None if config["text_file"] else config["split"]
            result["references"] = applicable_references("loss", kind)
        elif task == "hellaswag":
            data = config["hellaswag_path"]
            result = hellaswag_accuracy(model_, tokenizer, items["hellaswag"], **common)
            result["count"] = len(items["hellaswag"])
            result["references"] = applicable_references("hellaswag")
        else:
            data = config["lambada_path"]
            result = lambada_metrics(model_, tokenizer, items["lambada"], **common)
            result["references"] = applicable_references("lambada")
        result["seconds"] = time.time() - t0
        result["data"] = data
        report["results"][task] = result
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in result.items()
                          if k not in ("references", "data", "split") and not isinstance(v, dict))
        print(f"{task} on {data}: {shown}")
    metrics_path = os.path.join(out_dir, "metrics.jsonl") if out_dir else None
    write_report(report_dir, report, metrics_path)
    print(f"report: {os.path.join(report_dir, 'report.md')}"
          + (f", {os.path.join(report_dir, report['plot'])}" if report.get("plot") else ""))
    return report


def _tokenizer_summary(tokenizer):
    spec = tokenizer.spec()
    if spec.get("name") == "char":  # the full character list would swamp the report
        return {"name": "char", "characters": len(spec.get("chars", ""))}
    return spec


def main(argv):
    from configurator import load_config
    config = load_config(DEFAULTS, argv)
    try:
        return run(config)
    except EvalError as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:  # the report is written last (each file atomically): stopping before it leaves none
        print("\ninterrupted: no report written", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    from configurator import quiet_broken_pipe
    with quiet_broken_pipe():
        main(sys.argv[1:])
