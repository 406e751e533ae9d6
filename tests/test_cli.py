"""srigl_np.cli, the kit every command is built from: typed values and their one spelling,
one-line errors, defaults in --help, the error wrapper and the quiet closed pipe."""

import argparse
import subprocess
import sys

import pytest

from srigl_np import cli
from srigl_np.backend import DeviceError


@pytest.mark.parametrize("make, text, value", [
    (lambda: cli.integer(1), "3", 3),
    (lambda: cli.integer(0), "0", 0),
    (lambda: cli.integer(0, 64), "64", 64),
    (lambda: cli.number(0), "0", 0.0),
    (lambda: cli.number(0, low_open=True), "1e-9", 1e-9),
    (lambda: cli.fraction(high_open=True), "0", 0.0),
    (lambda: cli.fraction(), "1", 1.0),
    (lambda: cli.fraction(low_open=True, high_open=True), "0.5", 0.5),
])
def test_typed_values_accept(make, text, value):
    assert make()(text) == value


@pytest.mark.parametrize("make, text, message", [
    (lambda: cli.integer(1), "x", "must be an integer, got 'x'"),
    (lambda: cli.integer(1), "1.5", "must be an integer, got '1.5'"),
    (lambda: cli.integer(1), "0", "must be a positive integer, got 0"),
    (lambda: cli.integer(0), "-1", "must be >= 0, got -1"),
    (lambda: cli.integer(0, 64), "65", "must be in [0, 64], got 65"),
    (lambda: cli.number(0), "-1", "must be a finite number >= 0, got -1"),
    (lambda: cli.number(0), "inf", "must be a finite number >= 0, got inf"),
    (lambda: cli.number(0, low_open=True), "0", "must be a finite number > 0, got 0"),
    (lambda: cli.number(), "nan", "must be a finite number, got nan"),
    (lambda: cli.number(), "x", "must be a number, got 'x'"),
    (lambda: cli.fraction(high_open=True), "1", "must be in [0, 1), got 1"),
    (lambda: cli.fraction(), "nan", "must be in [0, 1], got nan"),
    (lambda: cli.fraction(low_open=True, high_open=True), "0", "must be in (0, 1), got 0"),
])
def test_typed_values_refuse_in_one_spelling(make, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        make()(text)
    assert str(info.value) == message


@pytest.mark.parametrize("text, shape", [("10x12", (10, 12)), ("6,2,3,3", (6, 2, 3, 3)),
                                         ("4X5", (4, 5))])
def test_shapes_parse(text, shape):
    assert cli.parse_shape(text) == shape
    assert cli.shape_text(shape) == text.lower().replace(",", "x")


@pytest.mark.parametrize("text", ["10", "0x3", "1x2x3x4x5", "ax3", "", "-1x2"])
def test_bad_shapes_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="NxF or NxCxHxW"):
        cli.parse_shape(text)


def _parser():
    parser = cli.create_parser("prog", "What it does.\n\n  kept   as written")
    parser.add_argument("--count", type=cli.integer(1), default=3, help="how many")
    parser.add_argument("--names", nargs="+", default=["a", "b"], help="which")
    parser.add_argument("--switch", action="store_true", help="a switch")
    parser.add_argument("--maybe", default=None, help="none to show")
    parser.add_argument("--said", default=7, help="said in words (default: seven)")
    return parser


def test_help_keeps_the_description_and_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "What it does. kept as written" in text
    assert "how many (default: 3)" in text
    assert "which (default: a b)" in text
    assert "a switch (default: off)" in text
    assert "none to show" in text and "none to show (default" not in text
    assert text.count("(default: seven)") == 1 and "(default: 7)" not in text


def test_a_bad_flag_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["--count", "0"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "prog: error: argument --count: must be a positive " \
                                      "integer, got 0\n"


@pytest.mark.parametrize("error", [OSError("disk gone"), ValueError("bad value"),
                                   DeviceError("no GPU"), KeyError("extra kind")])
def test_the_wrapper_turns_errors_into_one_line_and_exit_1(capsys, error):
    @cli.command("prog", errors=(KeyError,))
    def main(argv=None):
        print("some output")
        raise error

    assert main([]) == 1
    captured = capsys.readouterr()
    assert captured.out == "some output\n"
    assert captured.err == f"prog: error: {error}\n"


def test_the_wrapper_passes_the_status_and_other_errors_through():
    assert cli.command("prog")(lambda argv=None: 3)() == 3
    with pytest.raises(TypeError):
        cli.command("prog")(lambda: (_ for _ in ()).throw(TypeError("a bug")))()


CLOSED_PIPE = """
import sys
from srigl_np.cli import command

@command("prog")
def main(argv=None):
    for i in range(200000):
        print("line", i)
    return 0

sys.exit(main())
"""


def test_a_closed_pipe_ends_quietly():
    """`prog | head -1`: no BrokenPipeError traceback, no "Exception ignored" at exit."""
    writer = subprocess.Popen([sys.executable, "-c", CLOSED_PIPE], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert writer.stdout.readline() == b"line 0\n"
    writer.stdout.close()          # the reader goes away, as head does
    status = writer.wait(timeout=60)
    stderr = writer.stderr.read().decode()
    assert stderr == "" and status == cli.BROKEN_PIPE_STATUS


def test_format_table():
    rows = [{"a": "1", "bb": "long value"}, {"a": "22", "bb": "x"}]
    assert cli.format_table(rows).splitlines() == ["a   bb", "--  ----------",
                                                   "1   long value", "22  x"]
    assert cli.format_table([], empty="nothing") == "nothing"


COMMANDS = ("audit", "bench.command", "condense", "erk_table", "experiments.command", "explain",
            "train")


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_built_on_the_kit(name):
    """One parser class, one help formatter, one error wrapper for the seven commands; and
    every flag with a default says it in --help."""
    import importlib

    module = importlib.import_module(f"srigl_np.{name}")
    parser = module.make_parser()
    assert isinstance(parser, cli.Parser) and parser.formatter_class is cli.HelpFormatter
    assert hasattr(module.main, "__wrapped__")          # functools.wraps of cli.command
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.option_strings and action.default not in (None, argparse.SUPPRESS) \
                and action.dest != "help":
            shown = " ".join(cli.HelpFormatter("x")._get_help_string(action).split())
            assert "(default:" in shown, (name, action.dest)
            assert shown.split("(default:")[0].strip()[:30] in text, (name, action.dest)


# -- faults any command can meet: one line, whatever the command was doing -------------------

@pytest.mark.parametrize("error, line", [
    (MemoryError("Unable to allocate 8.00 EiB for an array with shape (2**60,)"),
     "out of memory: Unable to allocate 8.00 EiB for an array with shape (2**60,)"),
    (MemoryError(), "out of memory"),
    (RecursionError("maximum recursion depth exceeded while decoding a JSON array"),
     "input nested too deeply: maximum recursion depth exceeded while decoding a JSON array"),
    (OverflowError("int too large to convert to float"),
     "number too large: int too large to convert to float"),
])
def test_the_wrapper_turns_faults_into_one_line_that_says_what_happened(capsys, error, line):
    @cli.command("prog")
    def main(argv=None):
        raise error

    assert main([]) == 1
    assert capsys.readouterr().err == f"prog: error: {line}\n"


def test_a_real_recursion_is_one_line():
    @cli.command("prog")
    def main(argv=None):
        import json

        return json.loads("[" * 200_000 + "]" * 200_000)

    assert main([]) == 1


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("fault", [MemoryError, RecursionError, OverflowError])
def test_every_command_reports_a_fault_in_one_line(name, fault, monkeypatch, capsys):
    """The seven commands at once: a fault raised inside main (here, where it reads its
    arguments) ends as one line and status 1, never a traceback."""
    import importlib

    module = importlib.import_module(f"srigl_np.{name}")

    class Faulty:
        def parse_args(self, argv=None):
            raise fault("raised inside main")

    monkeypatch.setattr(module, "make_parser", Faulty)
    assert module.main([]) == 1
    what = cli.FAULTS[fault]
    assert capsys.readouterr().err == (f"python -m srigl_np.{name.split('.')[0]}: error: "
                                       f"{what}: raised inside main\n")


# -- path flags and output files -------------------------------------------------------------

def test_a_path_flag_refuses_the_empty_string():
    assert cli.path("out.json") == "out.json"
    with pytest.raises(argparse.ArgumentTypeError, match="^must be a path, got ''$"):
        cli.path("")


def test_output_files_are_checked_in_one_place(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "file").write_text("")
    check = cli.check_output_file
    assert check("--json", str(tmp_path / "new.json")) is None
    assert check("--json", str(tmp_path / "file")) is None
    assert check("--json", "") == "--json: must be a path, got ''"
    assert check("--json", str(tmp_path)) == f"--json {tmp_path}: is a directory; give a file name"
    assert check("--out", str(tmp_path / "pipe")) == (
        f"--out {tmp_path / 'pipe'}: not a regular file (a FIFO); give a file path")
    assert check("--json", str(tmp_path / "no" / "x")).endswith(
        f"directory {tmp_path / 'no'} does not exist")
    assert check("--json", str(tmp_path / "file" / "x")).endswith(
        f"{tmp_path / 'file'} is not a directory")
    assert check("--json", "/dev/stdout") == ("--json /dev/stdout: not a regular file (a stream "
                                              "of this process); give a file path")
    assert check("--json", f"{tmp_path}/new/").endswith("ends with '/', as a directory does; "
                                                        "give a file name")
    assert check("--json", str(tmp_path / ("x" * 300))).endswith(": File name too long")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert check("--json", str(tmp_path / "loop")).endswith("Too many levels of symbolic links")


def test_image_formats_are_the_ones_matplotlib_can_write_here(tmp_path):
    pytest.importorskip("matplotlib")
    import shutil

    import matplotlib

    assert cli.image_format("a.PDF") == "pdf" and cli.image_format("noext") == "png"
    assert cli.check_output_file("--plot", str(tmp_path / "a.svg"), image=True) is None
    refusal = cli.check_output_file("--out", str(tmp_path / "a.xyz"), image=True)
    assert refusal.startswith(f"--out {tmp_path / 'a.xyz'}: unknown image format 'xyz'; the "
                              f"suffix must be one of ") and ", png, " in refusal
    if shutil.which(matplotlib.rcParams["pgf.texsystem"]) is None:   # savefig needs TeX
        with pytest.raises(ValueError, match="unknown image format 'pgf'"):
            cli.image_format("figure.pgf")
