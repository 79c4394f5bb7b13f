"""eval.py against independent references: transformers' GPT-2 on the same random weights for the
per-item log-likelihoods, hand-computed uniform-model numbers for bits per byte, a direct forward
for sliding-window loss; plus HellaSwag markup cleaning, the report, and bad input.

    python -m pytest tests/test_eval.py -q
"""

import json
import math
import os
import random
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eval as ev
from checkpoint import load_model
from conftest import SHARED, run_script
from model import GPT, GPTConfig
from tokenizer import load_tokenizer

HELLASWAG = os.path.join(SHARED, "hellaswag", "hellaswag_val.jsonl")
LAMBADA = os.path.join(SHARED, "lambada", "lambada_openai_test.jsonl")
HF_BLOCK = 128


# -----------------------------------------------------------------------------
# fixtures: one tiny random GPT-2 in Hugging Face layout, loaded by both sides

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50257, n_positions=HF_BLOCK, n_embd=32, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(config)
    with torch.no_grad():
        # GPT-2's init (std 0.02) gives nearly uniform logits; larger weights make the log-probs differ
        # per token, so a wrong position or an off-by-one shows up
        for name, p in hf.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
            elif name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.1)
    path = tmp_path_factory.mktemp("hf_gpt2")
    hf.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def hf_model(hf_dir):
    from transformers import GPT2LMHeadModel
    return GPT2LMHeadModel.from_pretrained(hf_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def ours(hf_dir):
    model, tokenizer, checkpoint = load_model(hf_dir, "cpu")
    assert checkpoint is None and tokenizer.name == "gpt2"
    return model, tokenizer


@torch.no_grad()
def hf_loglikelihood(hf_model, context, continuation, block_size=HF_BLOCK):
    """(sum of log-probs, all-greedy) of the continuation: one plain forward, position by position."""
    full = (context + continuation)[-(block_size + 1):]
    n = min(len(continuation), len(full) - 1)
    logits = hf_model(torch.tensor([full[:-1]])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    total, greedy = 0.0, True
    for position in range(len(full) - 1 - n, len(full) - 1):
        total += logprobs[position, full[position + 1]].item()
        greedy &= logits[position].argmax().item() == full[position + 1]
    return total, greedy


def synthetic_hellaswag(count, seed=0):
    """Made-up items, so the comparison never depends on ../shared being present."""
    rng = random.Random(seed)
    words = "the a man woman dog ball runs jumps over under quickly slowly red blue table kitchen then".split()
    items = []
    for _ in range(count):
        ctx = "Synthetic: " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 25))) + "."
        endings = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) + "." for _ in range(4)]
        items.append({"ctx": ctx, "endings": endings, "label": rng.randrange(4)})
    return items


def shared_items(path, loader, count):
    return loader(path, limit=count) if os.path.isfile(path) else []


# -----------------------------------------------------------------------------
# log-likelihoods match transformers

def test_hellaswag_loglikelihoods_match_transformers(ours, hf_model):
    model, tokenizer = ours
    items = synthetic_hellaswag(4) + shared_items(HELLASWAG, ev.load_hellaswag, 4)
    # one context longer than block_size: both sides must keep the right-most tokens
    items.append({"ctx": "Long: " + "and then it rolls on " * 40, "endings": ["stops.", "goes on and on.", "x", "y z"],
                  "label": 1})
    scores = ev.hellaswag_scores(model, tokenizer, items, "cpu", batch_size=5)
    correct = np.zeros(3)
    for item, s in zip(items, scores):
        ctx = tokenizer.encode(item["ctx"])
        expected, n_tokens = [], []
        for ending in item["endings"]:
            ending_ids = tokenizer.encode(" " + ending)
            expected.append(hf_loglikelihood(hf_model, ctx, ending_ids)[0])
            n_tokens.append(len(ending_ids))
        np.testing.assert_allclose(s["logprob"], expected, rtol=1e-5, atol=2e-4)
        assert list(s["n_tokens"]) == n_tokens
        expected = np.array(expected)
        chars = np.array([len(e) for e in item["endings"]])
        correct += [np.argmax(expected) == item["label"], np.argmax(expected / np.array(n_tokens)) == item["label"],
                    np.argmax(expected / chars) == item["label"]]
    accuracy = ev.hellaswag_accuracy(model, tokenizer, items, "cpu", batch_size=7)
    assert [accuracy["acc"], accuracy["acc_norm"], accuracy["acc_norm_chars"]] == pytest.approx(correct / len(items))


def test_lambada_loglikelihoods_and_greedy_match_transformers(ours, hf_model):
    model, tokenizer = ours
    items = [{"context": "He opened the door and saw his old", "target": " friend"},
             {"context": "Numbers: one two three four five six seven eight nine", "target": " ten"}]
    items += shared_items(LAMBADA, ev.load_lambada, 4)
    # a target the model is sure to decode greedily: its own argmax continuation of a context
    context = tokenizer.encode("The weather today is")
    with torch.no_grad():
        greedy_ids = list(context)
        for _ in range(2):
            greedy_ids.append(int(model(torch.tensor([greedy_ids]))[0][0, -1].argmax()))
    greedy_target = greedy_ids[len(context):]
    requests = [(tokenizer.encode(it["context"]), tokenizer.encode(it["target"])) for it in items]
    requests.append((context, greedy_target))
    scores = ev.score_continuations(model, requests, "cpu", batch_size=3)
    for i, (ctx, target) in enumerate(requests):
        expected, greedy = hf_loglikelihood(hf_model, ctx, target)
        assert scores["logprob"][i] == pytest.approx(expected, rel=1e-5, abs=2e-4)
        assert scores["greedy"][i] == greedy
        assert scores["n_tokens"][i] == len(target)
    assert scores["greedy"][-1]
    metrics = ev.lambada_metrics(model, tokenizer, items, "cpu", batch_size=4)
    expected = [hf_loglikelihood(hf_model, *request) for request in requests[:-1]]
    assert metrics["perplexity"] == pytest.approx(math.exp(-np.mean([e[0] for e in expected])), rel=1e-5)
    assert metrics["acc"] == pytest.approx(np.mean([e[1] for e in expected]))
    assert metrics["count"] == len(items)


def test_sliding_window_loss_matches_transformers(ours, hf_model):
    model, tokenizer = ours
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50257, size=300)
    for stride in (HF_BLOCK, 50, 7):
        nll = ev.sliding_window_nll(model, tokens, "cpu", batch_size=8, stride=stride)
        for begin, length, first in ev.sliding_windows(len(tokens), HF_BLOCK, stride)[::3]:
            with torch.no_grad():
                logits = hf_model(torch.from_numpy(tokens[None, begin:begin + length])).logits[0].double()
            expected = F.cross_entropy(logits, torch.tensor(tokens[begin + 1:begin + length + 1]), reduction="none")
            np.testing.assert_allclose(nll[first - 1:begin + length], expected[first - begin - 1:].numpy(),
                                       rtol=1e-5, atol=1e-4)


# -----------------------------------------------------------------------------
# sliding windows

@pytest.mark.parametrize("n_tokens,block_size,stride", [
    (2, 8, 4), (9, 8, 4), (10, 8, 4), (100, 8, 4), (100, 8, 8), (100, 8, 1), (101, 16, 5), (37, 64, 32), (64, 16, 100)])
def test_sliding_windows_score_each_token_once_with_context(n_tokens, block_size, stride):
    windows = ev.sliding_windows(n_tokens, block_size, stride)
    times_scored = np.zeros(n_tokens, dtype=int)
    length = min(block_size, n_tokens - 1)
    for begin, window_length, first in windows:
        assert window_length == length and begin >= 0 and begin + window_length <= n_tokens - 1
        assert begin + 1 <= first
        for target in range(first, begin + window_length + 1):
            times_scored[target] += 1
            # tokens[begin:target] is the context: all of it in the first window, else >= length - stride
            assert target - begin >= min(target, length - min(stride, length))
    assert times_scored[0] == 0 and (times_scored[1:] == 1).all()


def test_sliding_window_loss_equals_full_context_when_text_fits():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=97, n_layer=2, n_head=2, n_embd=32)).eval()
    tokens = np.random.default_rng(1).integers(0, 97, size=50)
    nll = ev.sliding_window_nll(model, tokens, "cpu", stride=7)
    with torch.no_grad():
        logits, _ = model(torch.tensor(tokens[None, :-1]))
    expected = F.cross_entropy(logits[0].double(), torch.tensor(tokens[1:]), reduction="none").numpy()
    np.testing.assert_allclose(nll, expected, rtol=1e-6, atol=1e-6)


# -----------------------------------------------------------------------------
# bits per byte on a model that knows nothing: every token costs ln(vocab_size)

def uniform_model(vocab_size, block_size=8):
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=1, n_head=1, n_embd=8))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # zero weights: every logit is 0, so the distribution is uniform over vocab_size
    return model.eval()


def test_bits_per_byte_uniform_char_model_multibyte_text():
    tokenizer = load_tokenizer({"name": "char", "chars": " abé"})  # 4 characters + end of text = 5 ids
    text = "aé b" * 5  # 20 characters, 25 UTF-8 bytes (é is 2)
    tokens = ev._with_leading_eot(tokenizer.encode(text), tokenizer, tokenizer.vocab_size)
    result = ev.loss_metrics(uniform_model(tokenizer.vocab_size), tokenizer, tokens, "cpu", batch_size=2, stride=3)
    assert result["tokens"] == 20 and result["bytes"] == 25
    assert result["loss"] == pytest.approx(math.log(5), abs=1e-6)
    assert result["bits_per_byte"] == pytest.approx(20 * math.log2(5) / 25, abs=1e-6)
    assert result["perplexity"] == pytest.approx(5, rel=1e-5)


def test_bits_per_byte_uniform_gpt2_model_hello_world(tmp_path):
    tokenizer = load_tokenizer({"name": "gpt2"})
    path = tmp_path / "hello.txt"
    path.write_text("Hello world", encoding="utf-8")
    tokens = ev.text_file_tokens(str(path), tokenizer, 50257)
    assert tokens.tolist() == [50256, 15496, 995]  # end of text in front, so "Hello" is scored too
    result = ev.loss_metrics(uniform_model(50257), tokenizer, tokens, "cpu")
    assert (result["tokens"], result["bytes"]) == (2, 11)
    assert result["bits_per_byte"] == pytest.approx(2 * math.log2(50257) / 11, abs=1e-6)


def test_count_text_bytes_skips_end_of_text():
    tokenizer = load_tokenizer({"name": "gpt2"})
    tokens = tokenizer.encode("héllo") + [50256] + tokenizer.encode("日本") + [50256]
    assert ev.count_text_bytes(tokenizer, tokens) == len("héllo".encode()) + len("日本".encode())


def test_loss_on_prepared_split_uniform_model(char_data_dir):
    from prepare import open_split, read_meta
    meta = read_meta(char_data_dir)
    tokenizer = load_tokenizer(meta["tokenizer"])
    model = uniform_model(meta["vocab_size"], block_size=64)
    tokens = ev.split_tokens(char_data_dir, "val", tokenizer, model.config.vocab_size, max_tokens=3000)
    stream = np.concatenate([np.asarray(s) for s in open_split(char_data_dir, "val")])
    assert len(tokens) == 3001
    expected_stream = stream if stream[0] == tokenizer.eot_token else np.concatenate([[tokenizer.eot_token], stream])
    assert tokens.tolist() == expected_stream[:3001].tolist()
    result = ev.loss_metrics(model, tokenizer, tokens, "cpu", batch_size=16, stride=16)
    text_bytes = sum(len(tokenizer.decode([t]).encode()) for t in tokens[1:] if t != tokenizer.eot_token)
    assert result["bytes"] == text_bytes
    assert result["loss"] == pytest.approx(math.log(meta["vocab_size"]), abs=1e-6)
    assert result["bits_per_byte"] == pytest.approx(3000 * math.log2(meta["vocab_size"]) / text_bytes, rel=1e-6)


# -----------------------------------------------------------------------------
# HellaSwag file formats

RAW_ITEM = {
    "ind": 4, "activity_label": "Home and Garden", "ctx_a": "[header] How to clean a roof [title] Gather your materials.",
    "ctx_b": "you", "endings": ["[step] Use a  ladder. [title] Be careful.", "Jump.", "Sing [substeps] loudly.", "Run."],
    "label": "2", "split": "val",
}


def test_raw_hellaswag_is_cleaned_like_lm_eval(tmp_path):
    assert ev.clean_hellaswag_text("  a [title] b [step] c  ") == "a. b c"
    path = tmp_path / "raw.jsonl"
    path.write_text(json.dumps(RAW_ITEM) + "\n", encoding="utf-8")
    [item] = ev.load_hellaswag(str(path))
    assert item["ctx"] == "Home and Garden: How to clean a roof. Gather your materials. You"
    # lm-eval strips before it removes markup, so a leading "[step] " leaves a space (and " [title]" after a
    # period leaves ".."): quirks kept on purpose, since published numbers were computed on this text
    assert item["endings"] == [" Use a ladder.. Be careful.", "Jump.", "Sing loudly.", "Run."]
    assert item["label"] == 2


@pytest.mark.skipif(not os.path.isfile(HELLASWAG), reason="../shared data absent")
def test_preprocessed_hellaswag_file_loads():
    items = ev.load_hellaswag(HELLASWAG)
    assert len(items) == 10042
    assert items[0]["ctx"].startswith("Roof shingle removal: ") and items[0]["label"] == 3
    assert len(ev.load_hellaswag(HELLASWAG, limit=25)) == 25
    assert len(ev.load_lambada(LAMBADA)) == 5153


def test_lambada_text_only_rows_split_at_last_word(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text(json.dumps({"text": "she walked to the door"}) + "\n", encoding="utf-8")
    assert ev.load_lambada(str(path)) == [{"context": "she walked to the", "target": " door"}]


# -----------------------------------------------------------------------------
# in-training use

def test_hellaswag_accuracy_restores_train_mode():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=16, dropout=0.1)).train()
    result = ev.hellaswag_accuracy(model, load_tokenizer({"name": "gpt2"}), synthetic_hellaswag(3), "cpu", 4)
    assert model.training
    assert set(result) == {"acc", "acc_norm", "acc_norm_chars"} and all(0 <= v <= 1 for v in result.values())


# -----------------------------------------------------------------------------
# the command line and its report

def write_checkpoint(out_dir, model, tokenizer_spec, data_dir="data/tinyshakespeare_char", step=20):
    os.makedirs(out_dir, exist_ok=True)
    torch.save({"model": {"_orig_mod." + k: v for k, v in model.state_dict().items()},
                "model_args": asdict(model.config), "tokenizer": tokenizer_spec, "config": {"data_dir": data_dir},
                "step": step, "best_val_loss": 2.0}, os.path.join(out_dir, "best.pt"))


def test_cli_report_with_loss_curves(tmp_path, char_data_dir):
    from prepare import read_meta
    meta = read_meta(char_data_dir)
    out_dir = tmp_path / "out-char"
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=meta["vocab_size"], n_layer=1, n_head=2, n_embd=16))
    write_checkpoint(str(out_dir), model, meta["tokenizer"], data_dir=char_data_dir)
    records = [{"type": "config", "step": 0, "config": {"data_dir": "data/tinyshakespeare_char"}}]
    records += [{"type": "train", "step": s, "loss": 4 - s / 10, "lr": 1e-3, "ms_per_step": 1.0,
                 "tokens_per_sec": 1.0, "mfu": None} for s in range(1, 21)]
    records += [{"type": "eval", "step": s, "train_loss": 4 - s / 9, "val_loss": 4.1 - s / 10} for s in (0, 10, 20)]
    lines = [json.dumps(r) for r in records] + ['{"type": "train", "step": 21, "lo']  # a write cut off by a kill
    (out_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    ev.main([f"--model={out_dir}", "--tasks=loss", "--device=cpu", "--max_tokens=2000", "--progress=False"])
    report = json.loads((out_dir / "report.json").read_text())
    loss = report["results"]["loss"]
    assert loss["tokens"] == 2000 and loss["bits_per_byte"] > 0 and report["step"] == 20
    assert loss["references"] == {}  # a folder not named tinyshakespeare: nanoGPT's 1.4697 may not apply
    assert report["plot"] == "loss_curves.png"
    with open(out_dir / "loss_curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "| bits_per_byte |" in (out_dir / "report.md").read_text()


def test_report_merges_tasks_of_one_weights_file_only(tmp_path):
    """--tasks=loss then --tasks=lambada on one model give one report; on a model retrained under the same path
    and step (another file), the earlier model's results must not appear beside the new one's."""
    def report(weights_file, task, value):
        return {"model": "out", "model_kind": "checkpoint", "step": 20, "weights_file": weights_file,
                "parameters": 1, "model_args": {}, "tokenizer": {}, "device": "cpu", "dtype": "float32",
                "written": "now", "results": {task: {"value": value}}}
    ev.write_report(str(tmp_path), report(["out/best.pt", 100, 1], "loss", 1.5))
    merged = ev.write_report(str(tmp_path), report(["out/best.pt", 100, 1], "lambada", 0.3))
    assert set(merged["results"]) == {"loss", "lambada"}
    retrained = ev.write_report(str(tmp_path), report(["out/best.pt", 100, 2], "lambada", 0.4))
    assert retrained["results"] == {"lambada": {"value": 0.4}}
    assert json.loads((tmp_path / "report.json").read_text())["results"] == {"lambada": {"value": 0.4}}


def test_read_metrics_dedupes_resumed_steps_and_skips_broken_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"type": "train", "step": 1, "loss": 5.0}, {"type": "train", "step": 2, "loss": 4.0},
            {"type": "train", "step": 2, "loss": 3.9}, {"type": "eval", "step": 2, "train_loss": 4, "val_loss": 4.2}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    metrics = ev.read_metrics(str(path))
    assert [r["loss"] for r in metrics["train"]] == [5.0, 3.9]
    assert len(metrics["eval"]) == 1 and metrics["skipped_lines"] == 1


def test_reference_lines_only_where_they_apply():
    gpt2, char = {"name": "gpt2"}, {"name": "char", "chars": "ab"}
    assert ev.data_kind("data/openwebtext", gpt2) == "openwebtext"
    assert ev.data_kind("data/openwebtext/", char) is None
    assert ev.data_kind("data/tinyshakespeare_char", char) == "tinyshakespeare_char"
    assert ev.data_kind("data/shakespeare_char", char) is None  # prepare.py's 38 plays, not tinyshakespeare
    assert ev.data_kind("data/shakespeare_gpt2", gpt2) is None
    assert set(ev.applicable_references("loss", "openwebtext")) == {"owt_gpt2_val_loss", "owt_gpt2_finetuned_val_loss"}
    assert ev.applicable_references("loss", None) == {}
    assert {r["value"] for r in ev.applicable_references("hellaswag").values()} >= {0.25, 0.2955, 0.3114, 0.337}


@pytest.mark.parametrize("kind,hellaswag", [("tinyshakespeare_char", False), ("openwebtext", True)])
def test_curves_legends_fit_inside_the_figure(kind, hellaswag):
    # the longest labels: published reference lines and eval.py's marker (a legend wider than its axes used to run
    # off the left edge of loss_curves.png)
    steps = range(0, 5001, 250)
    evals = [dict(step=s, train_loss=4 - s / 2000, val_loss=4.2 - s / 2500,
                  **({"hellaswag_acc_norm": 0.25 + s / 1e5, "hellaswag_acc": 0.25} if hellaswag else {}))
             for s in steps]
    metrics = {"train": [{"step": s, "loss": 4 - s / 2000} for s in range(5001)], "eval": evals, "config": {}}
    fig = ev.curves_figure(metrics, kind, title="out-shakespeare-char: loss",
                           marker=(1500, 1.4553, "eval.py val loss, full context: 1.4553"))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(fig).get_renderer()  # the PNG writer's canvas
    fig.draw(renderer)  # lays out (constrained layout) as savefig does
    legends = [ax.get_legend() for ax in fig.axes]
    assert len(legends) == (2 if hellaswag else 1) and all(legend is not None for legend in legends)
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1, \
            (box, fig.bbox)


# -----------------------------------------------------------------------------
# bad input: one line, non-zero exit

def expect_error(argv, *fragments):
    with pytest.raises(SystemExit) as raised:
        ev.main(argv)
    message = str(raised.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_bad_input_errors(tmp_path, hf_dir):
    expect_error(["--tasks=loss,squad"], "unknown task squad", "hellaswag")
    expect_error(["--tasks=hellaswag", f"--hellaswag_path={tmp_path / 'nope.jsonl'}"], "not found")
    expect_error(["--tasks=hellaswag"], "--hellaswag_path", "github.com/rowanz/hellaswag")  # and where to get it
    expect_error(["--tasks=lambada"], "--lambada_path", "lambada_test.jsonl")
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    expect_error(["--tasks=hellaswag", f"--hellaswag_path={wrong}"], "line 1", "ctx")
    expect_error(["--tasks=lambada", f"--lambada_path={wrong}"], "line 1", "context and target")
    bad_label = tmp_path / "label.jsonl"
    bad_label.write_text(json.dumps({"ctx": "c", "endings": ["a", "b"], "label": 7}) + "\n")
    expect_error(["--tasks=hellaswag", f"--hellaswag_path={bad_label}"], "label")
    not_json = tmp_path / "text.jsonl"
    not_json.write_text("hello\n")
    expect_error(["--tasks=hellaswag", f"--hellaswag_path={not_json}"], "not JSON")
    expect_error(["--tasks=loss", f"--model={tmp_path / 'missing'}"], "not found")
    expect_error(["--tasks=loss", f"--model={tmp_path}"], "cannot load model")  # a folder with no checkpoint
    expect_error(["--tasks=loss", f"--model={hf_dir}", "--device=cpu"], "--data_dir")
    expect_error(["--tasks=loss", f"--model={hf_dir}", "--text_file=/no/such.txt"], "not found")
    expect_error(["--tasks=loss", f"--model={hf_dir}", "--device=cpu", f"--data_dir={tmp_path}"], "meta.json")
    expect_error(["--taks=loss"], "unknown config key", "tasks")


def test_char_model_refuses_text_outside_its_vocabulary(tmp_path):
    out_dir = tmp_path / "out"
    write_checkpoint(str(out_dir), uniform_model(3), {"name": "char", "chars": "ab"})
    items = tmp_path / "h.jsonl"
    items.write_text(json.dumps({"ctx": "ab", "endings": ["zz", "b"], "label": 0}) + "\n")
    expect_error([f"--model={out_dir}", "--tasks=hellaswag", f"--hellaswag_path={items}", "--device=cpu"],
                 "cannot encode")


def test_cli_exits_nonzero_with_one_line():
    result = run_script(["eval.py", "--tasks=nonsense"], check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["error: unknown task nonsense; choose from loss, hellaswag, lambada "
                                                  "(comma-separated, e.g. --tasks=loss,hellaswag)"]


def test_report_dir_that_is_a_file_is_refused_before_the_tasks(tmp_path, char_data_dir):
    from prepare import read_meta
    meta = read_meta(char_data_dir)
    out_dir = tmp_path / "out"
    write_checkpoint(str(out_dir), GPT(GPTConfig(block_size=32, vocab_size=meta["vocab_size"], n_layer=1, n_head=2,
                                                 n_embd=16)), meta["tokenizer"], data_dir=char_data_dir)
    a_file = tmp_path / "somefile"
    a_file.write_text("keep me")
    message = expect_error([f"--model={out_dir}", "--tasks=loss", "--device=cpu", f"--report_dir={a_file}"],
                           f"{a_file} is a file, not a folder;")
    assert a_file.read_text() == "keep me" and "loss" not in message


def test_broken_meta_json_is_named(tmp_path, char_data_dir):
    import shutil
    from prepare import read_meta
    meta = read_meta(char_data_dir)
    data = tmp_path / "data"
    shutil.copytree(char_data_dir, data)
    (data / "meta.json").write_text((data / "meta.json").read_text()[:-10])  # cut off mid-write
    out_dir = tmp_path / "out"
    write_checkpoint(str(out_dir), GPT(GPTConfig(block_size=32, vocab_size=meta["vocab_size"], n_layer=1, n_head=2,
                                                 n_embd=16)), meta["tokenizer"], data_dir=str(data))
    expect_error([f"--model={out_dir}", "--tasks=loss", "--device=cpu"], f"{data / 'meta.json'}", "JSON")


def test_ctrl_c_writes_no_report_and_no_traceback(tmp_path):
    import signal
    import subprocess
    import sys
    from conftest import ROOT
    out_dir = tmp_path / "out"
    write_checkpoint(str(out_dir), GPT(GPTConfig(block_size=32, vocab_size=3, n_layer=1, n_head=2, n_embd=16)),
                     {"name": "char", "chars": "ab"})
    text = tmp_path / "t.txt"
    text.write_text("ab" * 50_000)  # stride 1: 100k windows, far more than the test waits for
    process = subprocess.Popen([sys.executable, "eval.py", f"--model={out_dir}", "--tasks=loss", "--device=cpu",
                                f"--text_file={text}", "--stride=1", "--progress=False"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                               # a shell's background job ignores SIGINT; the script should see Ctrl-C as a user does
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert process.stdout.readline().startswith(b"model ")  # loaded: the scoring has begun
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.decode().strip() == "interrupted: no report written"
    assert not (out_dir / "report.json").exists()
