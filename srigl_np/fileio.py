"""Writing files so that a crash never leaves half of one: the package's one file-writing path.

``atomic_write`` writes to a temporary file in the destination directory, flushes and
fsyncs it, gives it the mode a plain ``open(path, "w")`` would, and renames it over the
target: readers see the old file or the new one, never a mix. Checkpoints, metrics, the
audit trail, condensed models, bench JSON and plots all go through it.
"""

import json
import os
import tempfile


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
