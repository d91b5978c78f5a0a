"""Files that are never half written, and folders one command at a time.

- `atomic_write()`: a file appears whole or not at all (a temporary file renamed into place; a killed
  writer's leftovers are recognised by host and pid and cleared by the next write).
- `folder_lock()`: one command per output folder; a second is refused in one line.
- `check_writable()`: an output path is checked before the long work, creating nothing.
- `safe_load_pickle()`: a pickle admitting only numpy arrays and plain containers (loading a pickle can run
  code, and data files get passed between people).
"""

import contextlib
import glob
import os
import pickle
import socket
import tempfile
import time
from pathlib import Path

from core.errors import InputError

# (module, name) pairs a data file may reference. Plain containers (dict, list, tuple, str, int, float,
# bytes, bool, None) need no lookup at all. numpy moved `core` to `_core` in 2.0: accept both spellings
# so files written by either major version load.
_ALLOWED_GLOBALS = {
    (module, name)
    for core in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{core}.multiarray", "_reconstruct"),
        (f"{core}.multiarray", "scalar"),
        (f"{core}.numeric", "_frombuffer"),
    )
} | {("numpy", "ndarray"), ("numpy", "dtype")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it references {module}.{name}")


def safe_load_pickle(path, *, remedy):
    """Unpickle `path`, admitting only numpy arrays and plain containers.

    `remedy` finishes every error message, e.g. "re-run scripts/binarized_data.py".
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist: {remedy}")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty: {remedy}")
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f).load()
    except pickle.UnpicklingError as e:
        msg = str(e)
        if msg.startswith("it references"):
            raise InputError(
                f"{path} is not a plain data file ({msg}, and loading it could run code); "
                f"only numpy arrays and plain containers are accepted: {remedy}"
            ) from None
        raise InputError(f"{path} is truncated or damaged, or not a pickle ({msg}): {remedy}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as e:
        raise InputError(f"{path} is truncated or damaged ({type(e).__name__}: {e}): {remedy}") from None
    return obj


def _umask():
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


HOST = socket.gethostname().replace(".", "_")
STALE_AFTER = 24 * 3600  # seconds: a temporary file of another machine this old has no living writer


def _tmp_prefix(path):
    """Temporary files of atomic_write(path) are named .<name>.<host>.<pid>.<random>.tmp: two processes (on
    one machine or several sharing a file system) never share one, and a stale one names its owner."""
    return f".{path.name}.{HOST}.{os.getpid()}."


def _owner_alive(host, pid):
    if host != HOST:
        return None  # another machine's process: cannot be asked
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_tmp(path):
    """Delete temporary files that an interrupted `atomic_write(path)` left beside `path`: those whose
    process is gone (this machine), or, for another machine's, older than a day. A file another running
    process is writing is left alone."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        parts = stale.name[len(path.name) + 2 : -len(".tmp")].split(".")
        alive = _owner_alive(parts[0], int(parts[1])) if len(parts) == 3 and parts[1].isdigit() else None
        with contextlib.suppress(OSError):
            if alive is False or (alive is None and time.time() - stale.stat().st_mtime > STALE_AFTER):
                stale.unlink()


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file next to `path`; it replaces `path` only if the block finishes.

    A crash or an error leaves no half-written output behind. The file gets the mode a plain open()
    would give it (0666 less the umask), not mkstemp's owner-only 0600: others on a shared machine read it.
    An OSError names `path`, not the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    except OSError as e:
        e.filename = str(path)
        raise
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename == tmp:
            e.filename = str(path)
        raise


@contextlib.contextmanager
def folder_lock(lock_file, what):
    """Hold an advisory lock on `lock_file` for the block: a second command on the same run folder (two
    run_glue.py --overwrite_output_dir, two train.py --force) is refused in one line instead of both writing
    into one folder. The lock goes with the process, however it ends (flock); the file stays."""
    import fcntl

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise InputError(f"{what} is in use by another command ({holder}): wait for it to finish, or give "
                             "another folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        yield


def check_writable(path, what="output", *, folder=False):
    """Raise InputError unless `path` (a file, or with `folder` a folder) can be created or replaced.

    Run before the long work: a typo in an output path must not cost an hour of tokenizing. Creates
    nothing: it probes the nearest existing ancestor with a temporary file and removes it.
    """
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise InputError(f"{what} {path} exists and is not a folder: pick another path")
        if not folder and not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise InputError(f"{what} {path} is {kind}: give a file path")
    ancestor = path if folder and path.is_dir() else path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"cannot write {what} {path}: {ancestor} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=".write-probe.", suffix=".tmp")
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise InputError(f"cannot write {what} {path}: {ancestor} is not writable ({reason})") from None
    os.close(fd)
    os.unlink(probe)
