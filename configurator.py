"""Config overrides for every script, nanoGPT style.

A script keeps its defaults as plain module-level values and, under `__main__`, calls

    config = load_config(defaults, sys.argv[1:])

Each argument is either a config file (`config/train_shakespeare_char.py`: plain Python whose
top-level assignments override defaults) or a flag `--key=value`. Later arguments win.
Values are parsed with `ast.literal_eval`, so `--learning_rate=3e-4`, `--compile=False` and
`--out_dir=out-small` all work (a value that is not a Python literal is taken as a string). A text setting takes
the text as written, even when it reads as a number: `--start=1234` is the prompt "1234".

Unlike nanoGPT's exec-into-globals, mistakes fail loudly: an unknown key names the closest
valid keys, and a value whose type does not match the default's type is refused.
"""

import ast
import contextlib
import difflib
import os
import sys


class InputError(ValueError):
    """Bad input from the user (a setting, a file, a shape), with a message that names the fix. Every module's own
    error type derives from it (PrepareError, ModelError, FlashAttentionError, ...), so that a script can print all
    of them as one line and let anything else, a bug, keep its traceback."""


class ConfigError(SystemExit):
    """A one-line, user-facing config error; exits non-zero when uncaught."""

    def __init__(self, message):
        super().__init__(f"error: {message}")


@contextlib.contextmanager
def quiet_broken_pipe():
    """Every script's `__main__` runs inside this: when the reader of its output goes away (`python sample.py |
    head -3`), the script stops with exit status 1 instead of a BrokenPipeError traceback, as Python's docs
    recommend (library/signal.html, "Note on SIGPIPE"). Any other way out (an error line, Ctrl-C's status 130)
    is kept as it was, even when stdout's last flush also finds the pipe closed."""
    try:
        yield
        sys.stdout.flush()  # here, not at interpreter exit, where a failed flush prints "Exception ignored"
    except BrokenPipeError:
        _stdout_to_devnull()
        raise SystemExit(1) from None
    except BaseException:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _stdout_to_devnull()
        raise


def _stdout_to_devnull():
    """The interpreter flushes stdout once more at exit: on a closed pipe that would fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _check_type(key, value, default, source):
    """Return `value` coerced to the type of `default`, or raise ConfigError."""
    if default is None:
        return value  # None defaults accept anything (e.g. optional paths); a None value for others is refused
    expected = type(default)
    if expected is float and type(value) is int:
        return float(value)  # --lr=1 should mean 1.0
    if type(value) is not expected:
        hint = "; write True or False" if expected is bool else ""
        raise ConfigError(
            f"{source}: {key} must be {expected.__name__} (default {default!r}), "
            f"got {type(value).__name__} {value!r}{hint}"
        )
    return value


def _unknown_key(key, defaults, source):
    close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(sorted(defaults))}"
    return ConfigError(f"{source}: unknown config key '{key}'{hint}")


def _parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word like --device=cuda or --out_dir=out/run1


def _read_config_file(path):
    if not os.path.isfile(path):
        raise ConfigError(
            f"config file '{path}' not found; pass an existing file like config/train_shakespeare_char.py "
            f"or a flag of the form --key=value"
        )
    if not path.endswith(".py"):  # JSON, YAML, ...: run as Python they would set nothing, silently
        raise ConfigError(f"config file '{path}' is not a .py file; config files are Python assignments "
                          f"(batch_size = 4), like config/train_shakespeare_char.py. To hand the file to a setting, "
                          f"write it as a flag: --NAME={path}")
    namespace = {}
    with open(path) as f:
        code = f.read()
    try:
        exec(compile(code, path, "exec"), namespace)
    except Exception as e:
        raise ConfigError(f"config file '{path}' failed to run: {type(e).__name__}: {e}") from None
    # only plain data assignments count; imports and helpers inside the file are ignored
    settings = {
        k: v for k, v in namespace.items()
        if not k.startswith("_") and isinstance(v, (int, float, bool, str, type(None), list, tuple, dict))
    }
    if not settings:
        raise ConfigError(f"config file '{path}' sets nothing; write assignments like batch_size = 4")
    return settings


def load_config(defaults, argv, passed=None):
    """Apply config files and --key=value flags in `argv` to a copy of `defaults`. If `passed` is a set, the keys
    that argv set are added to it, for a script that treats what a run asked for apart from its defaults (train.py's
    resume takes every setting not passed from the checkpoint's run)."""
    config = dict(defaults)
    for arg in argv:
        if arg in ("-h", "--help"):
            print("settings (override with config/NAME.py files or --key=value flags):\n" + format_config(defaults))
            raise SystemExit(0)
        if arg.startswith("--"):
            if "=" not in arg:
                raise ConfigError(f"flag '{arg}' has no value; write it as {arg}=VALUE")
            key, text = arg[2:].split("=", 1)
            value = text if isinstance(defaults.get(key), str) else _parse_value(text)
            overrides, source = {key: value}, f"flag {arg}"
        else:
            overrides, source = _read_config_file(arg), f"config file {arg}"
        for key, value in overrides.items():
            if key not in defaults:
                raise _unknown_key(key, defaults, source)
            config[key] = _check_type(key, value, defaults[key], source)
            if passed is not None:
                passed.add(key)
    return config


def config_from_globals(namespace):
    """The config defaults a script defines at module level: every public plain-data global."""
    return {
        k: v for k, v in namespace.items()
        if not k.startswith("_") and isinstance(v, (int, float, bool, str, type(None)))
    }


def format_config(config):
    """One `key = value` line per entry, the way a config file would say it."""
    width = max((len(k) for k in config), default=0)
    return "\n".join(f"{k:<{width}} = {v!r}" for k, v in config.items())
