"""The command-line kit every ``python -m srigl_np.X`` command is built from.

- ``create_parser(prog, description)``: argparse that reports a bad flag or value in one
  line (``prog: error: ...``, exit 2) without the usage block, and whose ``--help`` keeps
  the description as written and ends each flag's help with its default.
- typed values for ``type=``: ``integer``, ``number`` and ``fraction`` (one spelling of an
  interval, ``must be in [0, 1), got 1.5``), ``path`` (any path flag: the empty string
  is refused, not read as "not given"), ``shape_text`` and ``parse_shape`` for
  ``NxF``-style shapes.
- ``check_output_file(flag, path, image=False)``: why a file a command will write cannot
  be written (its directory missing, a directory or a FIFO in its place, an image
  format matplotlib cannot write), checked before any work; ``image_format(path)``.
- ``command(prog)``: the wrapper of a command's ``main(argv)``. An ``OSError``,
  ``ValueError`` or ``DeviceError`` (and the command's own extra kinds) becomes one line
  on stderr, ``prog: error: <message>``, and exit status 1; so do a ``MemoryError``
  ("out of memory: ..."), a ``RecursionError`` ("input nested too deeply: ...") and an
  ``OverflowError`` ("number too large: ..."), whatever the command was doing; a closed
  pipe (``python -m srigl_np.audit RUN | head``) ends quietly with status 141, as a
  program killed by SIGPIPE.
- ``format_table(rows)``: rows of display strings as aligned columns.

It imports only ``backend`` (for ``DeviceError``) and ``fileio``, so every command can
use it.
"""

import argparse
import functools
import math
import os
import sys

import numpy as np

from .backend import DeviceError
from .fileio import not_a_file

# What a command reports in one line rather than a traceback: a file it cannot read or
# write, a value it refuses, a device it cannot use.
ERRORS = (OSError, ValueError, DeviceError)
# Faults any command can meet on hostile input, with what the line says before the
# exception's own text: memory a file or a size asked for, nesting past Python's
# recursion limit (a JSON or pickle nested thousands deep), a number past what a float
# holds (a 400-digit integer in a file's JSON).
FAULTS = {MemoryError: "out of memory", RecursionError: "input nested too deeply",
          OverflowError: "number too large"}
# The exit status of a command whose reader went away (128 + SIGPIPE).
BROKEN_PIPE_STATUS = 141


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag or value in one line, without usage or traceback."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written; each flag's help ends with "(default: X)" ("off" for a
    switch), unless the help already says its default in words or the flag has none to
    show (None, a suppressed default)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default:" in text or "%(default)" in text or not action.option_strings:
            return text
        default = action.default
        if default is None or default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction):   # a switch: say off, not False
            return text + " (default: off)"
        if isinstance(default, (list, tuple)):
            return text + f" (default: {' '.join(map(str, default))})"
        return text + " (default: %(default)s)"


def create_parser(prog, description):
    """The parser of ``python -m srigl_np.<command>``: one-line errors, defaults in help."""
    return Parser(prog=prog, description=description, formatter_class=HelpFormatter)


# -- typed values ---------------------------------------------------------------------------

def _bound_text(low, high, low_open, high_open):
    def text(bound):     # integers as written (1000000), floats shortest (0.5)
        return str(bound) if isinstance(bound, int) else f"{bound:g}"
    if high is None:
        return f"{'>' if low_open else '>='} {text(low)}"
    return f"in {'(' if low_open else '['}{text(low)}, {text(high)}{')' if high_open else ']'}"


def integer(low=None, high=None):
    """``type=`` for an integer in [low, high] (either bound may be None).

    Messages: "must be an integer, got 'x'", "must be a positive integer, got 0" (low 1,
    no high), "must be >= 0, got -1", "must be in [0, 64], got 65"."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            what = ("a positive integer" if (low, high) == (1, None) else
                    _bound_text(low, high, False, False) if low is not None else
                    f"<= {high}")
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    parse.__name__ = "integer"
    return parse


def number(low=None, high=None, *, low_open=False, high_open=False):
    """``type=`` for a finite float in the interval from ``low`` to ``high`` (open or closed
    at either end; a None bound is no bound). Messages: "must be a number, got 'x'",
    "must be a finite number > 0, got inf", "must be in [0, 1), got 1.5"."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        ok = (math.isfinite(value)
              and (low is None or (value > low if low_open else value >= low))
              and (high is None or (value < high if high_open else value <= high)))
        if not ok:
            what = ("a finite number" if low is None and high is None else
                    f"a finite number {_bound_text(low, None, low_open, False)}"
                    if high is None else _bound_text(low, high, low_open, high_open))
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


def numbers(low=None, high=None, *, low_open=False, high_open=False):
    """``type=`` for one number or a comma-separated list of them (per-channel values:
    "0.485,0.456,0.406"), each as ``number`` checks it: a float for one, else a 1-D
    float64 array."""
    one = number(low, high, low_open=low_open, high_open=high_open)

    def parse(text):
        values = [one(part) for part in text.split(",")]
        return values[0] if len(values) == 1 else np.array(values, dtype=np.float64)
    parse.__name__ = "numbers"
    return parse


def fraction(*, low_open=False, high_open=False):
    """``type=`` for a fraction: a number in [0, 1], either end open on request."""
    return number(0, 1, low_open=low_open, high_open=high_open)


def path(text):
    """``type=`` for a path flag: the text itself, refused when empty ("must be a path,
    got ''"), so ``--json ''`` is an error rather than no JSON."""
    if not text:
        raise argparse.ArgumentTypeError("must be a path, got ''")
    return text


def image_format(path):
    """The format matplotlib writes ``path`` in, from its suffix (png without one).
    ValueError for a suffix it cannot write here ("unknown image format 'xyz'; the
    suffix must be one of ..."; pgf only with its TeX system installed); ImportError
    saying how to install matplotlib without it."""
    try:
        import matplotlib
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install matplotlib "
                          "(or srigl_np[plot])") from None
    import shutil

    formats = set(FigureCanvasBase.get_supported_filetypes())
    if shutil.which(matplotlib.rcParams["pgf.texsystem"]) is None:
        formats.discard("pgf")   # savefig runs TeX for it, and fails without one
    suffix = os.path.splitext(os.fspath(path))[1][1:].lower() or "png"
    if suffix not in formats:
        raise ValueError(f"--plot {path}: unknown image format {suffix!r}; the suffix must "
                         f"be one of {', '.join(sorted(formats))}")
    return suffix


def check_output_file(flag, path, image=False):
    """None, or one line ``FLAG PATH: <why>`` saying why the command could not write the
    file ``path``: it is empty, a directory or not a regular file (``fileio``'s rule), its
    directory is missing, not a directory or not writable, or (``image``) matplotlib is
    missing or cannot write its suffix. For a command to call before any work."""
    if not path:
        return f"{flag}: must be a path, got ''"
    problem = not_a_file(path)
    if problem:
        return f"{flag} {path}: {problem}"
    directory = os.path.dirname(os.path.realpath(path))
    if not os.path.exists(directory):
        return f"{flag} {path}: directory {directory} does not exist"
    if not os.path.isdir(directory):
        return f"{flag} {path}: {directory} is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{flag} {path}: directory {directory} is not writable"
    try:   # what the write would meet at the end: a name too long, a symlink loop
        os.stat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return f"{flag} {path}: {exc.strerror or exc}"
    if image:
        try:
            image_format(path)
        except (ImportError, ValueError) as exc:
            return str(exc).replace("--plot", flag, 1)
    return None


def parse_shape(text, lengths=(2, 4), spelling="NxF or NxCxHxW"):
    """A shape written ``AxB[xC...]`` (``,`` also separates) as a tuple of positive ints
    of ``lengths[0]`` to ``lengths[1]`` entries; ``argparse.ArgumentTypeError`` saying
    ``must be <spelling> (positive integers), got '...'`` otherwise."""
    try:
        shape = tuple(int(part) for part in text.lower().replace(",", "x").split("x"))
    except ValueError:
        shape = ()
    if not lengths[0] <= len(shape) <= lengths[1] or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"must be {spelling} (positive integers), "
                                         f"got {text!r}")
    return shape


def shape_text(shape):
    """A shape as the command line writes it: (10, 12) -> '10x12'."""
    return "x".join(map(str, shape))


# -- running a command ----------------------------------------------------------------------

def command(prog, errors=()):
    """Decorate a command's ``main(argv=None, ...)``: its ``ERRORS`` (and ``errors``) and
    the ``FAULTS`` become one line on stderr, ``prog: error: <message>``, and return
    status 1; a closed stdout pipe ends it quietly with ``BROKEN_PIPE_STATUS``.
    argparse's own exits pass through."""
    caught = ERRORS + tuple(errors)

    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                status = main(*args, **kwargs)
                sys.stdout.flush()   # a closed pipe shows here, not at interpreter exit
                return status
            except BrokenPipeError:
                _drop_stdout()
                return BROKEN_PIPE_STATUS
            except caught as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                return 1
            except tuple(FAULTS) as exc:
                print(f"{prog}: error: {fault_text(exc)}", file=sys.stderr)
                return 1
        return run
    return wrap


def fault_text(exc):
    """One line for a ``FAULTS`` exception: what happened, then its own text if any:
    "out of memory: Unable to allocate 8.00 EiB for an array with shape ...",
    "input nested too deeply: maximum recursion depth exceeded ...",
    "number too large: int too large to convert to float"."""
    what = next(text for kind, text in FAULTS.items() if isinstance(exc, kind))
    detail = " ".join(str(exc).split())
    return f"{what}: {detail}" if detail else what


def _drop_stdout():
    """Point stdout at /dev/null, so the interpreter's last flush to the closed pipe does
    not print "Exception ignored ... BrokenPipeError" (Python's documented recipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):   # stdout is not a file (a test's capture)
        pass


def format_table(rows, empty=""):
    """Rows (dicts of display strings, the same keys) as aligned columns under a header;
    ``empty`` for no rows."""
    if not rows:
        return empty
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns),
             "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
