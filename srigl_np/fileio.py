"""Writing files so that a crash never leaves half of one, and the bounds on reading them.

``atomic_write`` writes to a temporary file in the destination directory, flushes and
fsyncs it, gives it the mode a plain ``open(path, "w")`` would, and renames it over the
target: readers see the old file or the new one, never a mix. Checkpoints, metrics, the
audit trail, condensed models, bench JSON and plots all go through it.

Every file srigl_np reads is untrusted, and two bounds on reading live here, one place
for every reader:

``max_bytes()``   the most bytes one model file may declare in all (the members of an
                  .npz, the entries of a PyTorch zip): ``DEFAULT_MAX_BYTES`` (4 GiB, over
                  ten times a ResNet-50 training checkpoint with its optimizer state),
                  or ``$SRIGL_NP_MAX_BYTES`` (bytes, or with a K, M, G or T suffix:
                  ``SRIGL_NP_MAX_BYTES=16G``) to read a bigger one.
``parse_json``    JSON text from a file (a checkpoint's meta, a condensed model's
                  metadata, an audit trail's lines): at most ``MAX_JSON_CHARS``
                  characters nested at most ``MAX_JSON_DEPTH`` deep, checked before it is
                  parsed, so neither a deep nesting (a RecursionError) nor a huge flat
                  one (gigabytes of Python objects) gets that far.
"""

import json
import os
import re
import tempfile

import numpy as np

MAX_BYTES_VARIABLE = "SRIGL_NP_MAX_BYTES"
DEFAULT_MAX_BYTES = 4 << 30
# A checkpoint's meta holds ~300 characters per epoch; a trail line or a condensed
# model's metadata far fewer. Parsed, JSON takes up to ~25 bytes per character.
MAX_JSON_CHARS = 4 << 20
MAX_JSON_DEPTH = 32


def _umask(status_path="/proc/self/status"):
    # Linux reports it; elsewhere os.umask must set it to read it, which for an instant
    # would give files other threads create the wrong mode.
    try:
        with open(status_path) as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def _new_file_mode(path):
    """The mode ``open(path, "w")`` would leave: the replaced file's, else 0o666 less umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def atomic_write(path, write):
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it to ``path``.

    The file ends with the permissions a plain ``open(path, "w")`` gives, not
    ``mkstemp``'s private 0o600, so runs and plots stay readable to whoever could read
    the directory.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write_jsonl(path, records):
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in records).encode()))


# -- bounds on reading ----------------------------------------------------------------------

_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def max_bytes():
    """The most bytes one model file may declare in all: ``$SRIGL_NP_MAX_BYTES`` when set
    (a positive number of bytes, or with a K, M, G or T suffix), else DEFAULT_MAX_BYTES."""
    text = os.environ.get(MAX_BYTES_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    match = re.fullmatch(r"(\d{1,15})\s*([KMGT]?)(?:I?B)?", text.upper())
    if not match or int(match[1]) == 0:
        raise ValueError(f"{MAX_BYTES_VARIABLE} must be a positive number of bytes, "
                         f"optionally with a K, M, G or T suffix (e.g. 16G), got {text!r:.40}")
    return int(match[1]) * _SIZE_SUFFIXES[match[2]]


def over_max_bytes(nbytes, what):
    """The reason to refuse ``what`` (e.g. "its members declare") ``nbytes`` bytes in
    all, or None when the cap allows them."""
    limit = max_bytes()
    if nbytes <= limit:
        return None
    return (f"{what} {nbytes} bytes in all, more than the {limit} bytes srigl_np reads "
            f"from one file (set {MAX_BYTES_VARIABLE}, e.g. {MAX_BYTES_VARIABLE}="
            f"{-(-nbytes // (1 << 30))}G, to read it)")


# A JSON string literal, escapes included: its brackets do not nest.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')


def json_depth(text):
    """How deep the arrays and objects of JSON ``text`` nest (0 for a bare value); the
    brackets inside strings do not count. Linear in the text, builds nothing."""
    outside = _JSON_STRING.sub("", text).encode("utf-8", "surrogatepass")
    codes = np.frombuffer(outside, dtype=np.uint8)
    steps = ((codes == ord("[")) | (codes == ord("{"))).view(np.int8) - (
        (codes == ord("]")) | (codes == ord("}"))).view(np.int8)
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


def parse_json(text, where, max_chars=MAX_JSON_CHARS):
    """``json.loads(text)`` for JSON read from a file (``text`` a str, or bytes in UTF-8),
    bounded: a ValueError of one line starting with ``where`` (the file, or "file:
    member") for text longer than ``max_chars`` characters or nested deeper than
    MAX_JSON_DEPTH, checked before anything is parsed. Text that is not JSON raises
    json.JSONDecodeError (UnicodeDecodeError for bytes not in UTF-8), for the caller to
    word as its format does."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    if len(text) > max_chars:
        raise ValueError(f"{where}: {len(text)} characters of JSON, more than the "
                         f"{max_chars} srigl_np reads")
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"{where}: JSON nested {depth} deep, more than the "
                         f"{MAX_JSON_DEPTH} levels srigl_np reads")
    try:
        return json.loads(text)
    except (RecursionError, MemoryError) as exc:   # not reached within the bounds above
        raise ValueError(f"{where}: JSON too large to read ({type(exc).__name__})") from None
