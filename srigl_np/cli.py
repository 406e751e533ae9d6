"""The command-line kit every ``python -m srigl_np.X`` command is built from.

- ``create_parser(prog, description)``: argparse that reports a bad flag or value in one
  line (``prog: error: ...``, exit 2) without the usage block, and whose ``--help`` keeps
  the description as written and ends each flag's help with its default.
- typed values for ``type=``: ``integer``, ``number`` and ``fraction`` (one spelling of an
  interval, ``must be in [0, 1), got 1.5``), ``shape_text`` and ``parse_shape`` for
  ``NxF``-style shapes.
- ``command(prog)``: the wrapper of a command's ``main(argv)``. An ``OSError``,
  ``ValueError`` or ``DeviceError`` (and the command's own extra kinds) becomes one line
  on stderr, ``prog: error: <message>``, and exit status 1; a closed pipe
  (``python -m srigl_np.audit RUN | head``) ends quietly with status 141, as a program
  killed by SIGPIPE.
- ``format_table(rows)``: rows of display strings as aligned columns.

It imports only ``backend`` (for ``DeviceError``), so every command can use it.
"""

import argparse
import functools
import math
import os
import sys

from .backend import DeviceError

# What a command reports in one line rather than a traceback: a file it cannot read or
# write, a value it refuses, a device it cannot use.
ERRORS = (OSError, ValueError, DeviceError)
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


def fraction(*, low_open=False, high_open=False):
    """``type=`` for a fraction: a number in [0, 1], either end open on request."""
    return number(0, 1, low_open=low_open, high_open=high_open)


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
    """Decorate a command's ``main(argv=None, ...)``: its ``ERRORS`` (and ``errors``) become
    one line on stderr, ``prog: error: <message>``, and return status 1; a closed stdout
    pipe ends it quietly with ``BROKEN_PIPE_STATUS``. argparse's own exits pass through."""
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
        return run
    return wrap


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
