"""configurator.py: config files and --key=value flags override defaults; mistakes fail with one clear line."""

import subprocess
import sys

import pytest

from configurator import ConfigError, load_config
from conftest import run_into_closed_pipe

DEFAULTS = {"batch_size": 12, "learning_rate": 6e-4, "compile": True, "out_dir": "out", "init_from": "scratch"}


def test_flags_and_files_override_in_order(tmp_path):
    config_file = tmp_path / "small.py"
    config_file.write_text("batch_size = 64\nout_dir = 'out-small'\nimport math\n_private = 3\n")
    config = load_config(DEFAULTS, [str(config_file), "--batch_size=8", "--learning_rate=1", "--compile=False"])
    assert config == {"batch_size": 8, "learning_rate": 1.0, "compile": False, "out_dir": "out-small",
                      "init_from": "scratch"}
    assert DEFAULTS["batch_size"] == 12  # the defaults themselves are untouched


def test_bare_words_are_strings():
    assert load_config(DEFAULTS, ["--out_dir=runs/a-b", "--init_from=resume"])["out_dir"] == "runs/a-b"


def test_text_settings_keep_text_that_reads_as_a_literal():
    config = load_config(DEFAULTS, ["--out_dir=2024", "--init_from=True", "--batch_size=3"])
    assert (config["out_dir"], config["init_from"], config["batch_size"]) == ("2024", "True", 3)


def test_unknown_key_names_the_closest():
    with pytest.raises(ConfigError, match="unknown config key 'batchsize'.*batch_size"):
        load_config(DEFAULTS, ["--batchsize=3"])


def test_unknown_key_in_a_config_file(tmp_path):
    config_file = tmp_path / "bad.py"
    config_file.write_text("learning_rat = 1e-3\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(DEFAULTS, [str(config_file)])


@pytest.mark.parametrize("flag", ["--batch_size=1.5", "--compile=yes", "--learning_rate=fast", "--batch_size=True",
                                  "--batch_size=None"])
def test_wrong_type_is_refused(flag):
    with pytest.raises(ConfigError, match="must be"):
        load_config(DEFAULTS, [flag])


def test_passed_collects_the_keys_that_files_and_flags_set(tmp_path):
    config_file = tmp_path / "c.py"
    config_file.write_text("batch_size = 4\nlearning_rate = 6e-4  # the default: set all the same\n")
    passed = set()
    config = load_config(DEFAULTS, [str(config_file), "--compile=False"], passed)
    assert passed == {"batch_size", "learning_rate", "compile"} and config["batch_size"] == 4


def test_errors_say_how_to_write_it(tmp_path):
    with pytest.raises(ConfigError, match="compile must be bool .* got str 'yes'; write True or False"):
        load_config(DEFAULTS, ["--compile=yes"])
    (tmp_path / "book.txt").write_text("text")  # a data file passed where a setting was meant
    with pytest.raises(ConfigError, match=f"write it as a flag: --NAME={tmp_path / 'book.txt'}"):
        load_config(DEFAULTS, [str(tmp_path / "book.txt")])


def test_missing_file_and_missing_value():
    with pytest.raises(ConfigError, match="not found"):
        load_config(DEFAULTS, ["config/nope.py"])
    with pytest.raises(ConfigError, match="has no value"):
        load_config(DEFAULTS, ["--compile"])


def test_script_exits_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--n_layers=2"], capture_output=True, text=True)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: flag --n_layers=2: unknown config key 'n_layers'; did you mean n_layer")


def test_config_files_that_set_nothing_are_refused(tmp_path):
    """A JSON config run as Python sets nothing: refused, not a run on the defaults (GPT-2 124M on a CPU)."""
    (tmp_path / "c.json").write_text('{"batch_size": 4}\n')
    with pytest.raises(SystemExit, match="is not a .py file"):
        load_config(DEFAULTS, [str(tmp_path / "c.json")])
    (tmp_path / "empty.py").write_text("import math\n")
    with pytest.raises(SystemExit, match="sets nothing"):
        load_config(DEFAULTS, [str(tmp_path / "empty.py")])


def test_broken_pipe_stops_quietly():
    """`python X.py | head -3`: once head exits, the script stops with status 1 and no BrokenPipeError traceback
    or "Exception ignored" message, whether the write in the script fails or the flush at exit does."""
    for body in ("for i in range(100_000): print(i, flush=True)",  # fails while writing
                 "print('one line, left in the buffer')"):  # fails when the buffer is flushed at exit
        code = f"from configurator import quiet_broken_pipe\nwith quiet_broken_pipe():\n    {body}"
        returncode, stderr = run_into_closed_pipe(["-c", code], lines=1 if "range" in body else 0)
        assert (returncode, stderr) == (1, ""), body


def test_broken_pipe_keeps_the_scripts_own_ending():
    """An error line or Ctrl-C's status that leaves while stdout's buffer meets the closed pipe is not turned into
    the quiet status 1: the reader of stderr still learns what went wrong."""
    for body, expected in (("print('buffered'); raise SystemExit('error: the real problem')",
                            (1, "error: the real problem\n")),
                           ("print('buffered'); raise SystemExit(130)", (130, ""))):
        code = f"from configurator import quiet_broken_pipe\nwith quiet_broken_pipe():\n    {body}"
        assert run_into_closed_pipe(["-c", code]) == expected, body
