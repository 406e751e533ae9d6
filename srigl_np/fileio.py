"""Writing files so that a crash never leaves half of one, and the bounds on reading them.

``atomic_write`` writes to a temporary file in the destination directory, flushes and
fsyncs it, gives it the mode a plain ``open(path, "w")`` would, and renames it over the
target: readers see the old file or the new one, never a mix. Checkpoints, metrics, the
audit trail, condensed models, bench JSON and plots all go through it.

What a target may be (one rule for every writer: condense --out, bench --json/--plot,
audit and explain --plot, experiments --report, the trainer's run files):

* a regular file, or nothing yet: written as above;
* a symlink to a regular file (or to nothing yet): written through, as ``open(path, "w")``
  follows it: the link is resolved and its target is replaced atomically; the link stays;
* anything else (a directory, a FIFO, a device such as /dev/null, a socket, or a link
  to one; a name ending in "/"; a link into /proc or /dev/fd such as /dev/stdout,
  whatever it points at now): refused with ``OSError`` naming the path and what it is,
  ``out.json: not a regular file (a FIFO); give a file path``. Renaming over it would
  replace the device node or the pipe with a file (or, for a directory, fail), writing
  into a FIFO blocks until someone reads it, and replacing the file behind /dev/stdout
  would take the command's own output with it.

A write that fails (a full disk, a read-only directory) is an ``OSError`` of the same
kind saying ``cannot write PATH: <reason>``, and leaves the old file untouched.

``file_kind`` names what a path is (the commands check their output flags with it
before any work, and readers say "not a regular file (a FIFO)" rather than "missing").

``lock_directory`` makes one process the only writer of a directory (a training run's
``--out``): an exclusive ``flock`` on ``LOCK_NAME`` in it, held until released or until
the process dies, so a killed holder never blocks the next one.

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
import stat
import tempfile
import time

import numpy as np

try:
    import fcntl
except ImportError:   # not POSIX: directories are not locked
    fcntl = None

MAX_BYTES_VARIABLE = "SRIGL_NP_MAX_BYTES"
DEFAULT_MAX_BYTES = 4 << 30
# A checkpoint's meta holds ~300 characters per epoch; a trail line or a condensed
# model's metadata far fewer. Parsed, JSON takes up to ~25 bytes per character.
MAX_JSON_CHARS = 4 << 20
MAX_JSON_DEPTH = 32

# What a path that is not a regular file is, by its st_mode (after following symlinks).
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def file_kind(path):
    """What ``path`` is, symlinks followed: "a regular file", "a directory", "a FIFO",
    "a character device", "a block device", "a socket"; None when nothing is there (a
    missing path, a dangling symlink) or it cannot be looked at."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_a_file(path):
    """None when ``path`` is a regular file or nothing yet, else what is wrong with writing
    over it: "is a directory; give a file name" (or a name that ends with "/"), "not a
    regular file (a FIFO); give a file path", or, for a link into /proc or /dev/fd such
    as /dev/stdout, "not a regular file (a stream of this process)": replacing what it
    points at would take the file the command's own output goes to."""
    kind = file_kind(path)
    if kind == "a directory":
        return "is a directory; give a file name"
    if os.fspath(path).endswith(os.sep):
        return f"ends with {os.sep!r}, as a directory does; give a file name"
    if _through_proc(path):
        kind = "a stream of this process"
    if kind in (None, "a regular file"):
        return None
    return f"not a regular file ({kind}); give a file path"


def _through_proc(path, hops=40):
    """Whether ``path`` or a symlink it goes through names /proc/... or /dev/fd/...
    (/dev/stdout -> /proc/self/fd/1), whatever they point at now."""
    path = os.path.abspath(os.fspath(path))
    for _ in range(hops):
        if path.startswith(("/proc/", "/dev/fd/")):
            return True
        if not os.path.islink(path):
            return False
        path = os.path.join(os.path.dirname(path), os.readlink(path))
    return False


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

    A symlink is written through (its target replaced); a target that is not a regular
    file is refused (the module docstring has the rule). The file ends with the
    permissions a plain ``open(path, "w")`` gives, not ``mkstemp``'s private 0o600, so
    runs and plots stay readable to whoever could read the directory. OSError saying
    ``cannot write PATH: <reason>`` when the directory or the disk refuses it.
    """
    problem = not_a_file(path)
    if problem:
        raise OSError(f"{os.fspath(path)}: {problem}")
    target = os.path.realpath(path)   # a symlink: its target, as open() would write it
    tmp = None
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(target))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), _new_file_mode(target))
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise


def _write_error(path, exc):
    """``exc`` (an OSError) as the same kind with one line naming ``path``, not the
    temporary file: "cannot write out.json: No space left on device"."""
    message = f"cannot write {os.fspath(path)}: {exc.strerror or exc}"
    try:
        error = type(exc)(message)
    except TypeError:   # a subclass with its own constructor
        error = OSError(message)
    error.errno = exc.errno
    return error


def write_json(path, obj):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write_jsonl(path, records):
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in records).encode()))


# -- one writer per directory ---------------------------------------------------------------

LOCK_NAME = ".lock"
_HOLDER = re.compile(r"(\d{1,10}) ([ -~]{1,200})")   # "PID command" as DirectoryLock writes it


class DirectoryLock:
    """The exclusive lock of a directory, from ``lock_directory``: ``release()`` (or leaving
    its ``with`` block) deletes the lock file and lets go; the OS lets go if the process
    dies first."""

    def __init__(self, path, fd):
        self.path, self.fd = path, fd

    def release(self):
        if self.fd is None:
            return
        try:
            os.unlink(self.path)   # while still held: no one locks a file on its way out
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _open_lock_file(path):
    """A descriptor of the regular file ``path`` (created if missing), never through a
    symbolic link, never blocking on a FIFO."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise ValueError(f"cannot lock {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"cannot lock {path}: not a regular file; remove it")
    return fd


def _holder(fd, tries=20):
    """"PID n (command)" from a lock file's first line, as the holder wrote it; a holder
    that has just taken the lock writes it within moments, so an empty file is read again
    (``tries`` times, 5 ms apart) before the holder is "another process"."""
    for _ in range(tries):
        try:
            text = os.pread(fd, 256, 0).decode("ascii", "replace").split("\n")[0]
        except OSError:
            break
        match = _HOLDER.fullmatch(text)
        if match:
            return f"PID {match[1]} ({match[2]})"
        time.sleep(0.005)
    return "another process"


def lock_directory(directory, command, advice):
    """Take the exclusive lock of ``directory`` (it must exist) for ``command`` (the
    holder's name, e.g. "python -m srigl_np.train"): a DirectoryLock to hold while
    writing there. The lock is an ``flock`` on ``directory/LOCK_NAME``, which records
    "PID command" for the message others get; nothing else in the directory is touched.
    When another process holds it: ValueError "<directory> is in use by PID n (command);
    <advice>". ValueError too when the lock file cannot be made (read-only directory)."""
    path = os.path.join(directory, LOCK_NAME)
    if fcntl is None:
        return DirectoryLock(path, None)
    while True:
        fd = _open_lock_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ValueError(f"{directory} is in use by {holder}; {advice}") from None
        except OSError as exc:   # a file system without locks
            os.close(fd)
            raise ValueError(f"cannot lock {path}: {exc.strerror or exc}") from None
        try:   # the holder before us may have deleted the file we opened, and let go
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {command}\n".encode("ascii", "replace"), 0)
    return DirectoryLock(path, fd)


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
