"""Crash-safe writes of the files kbert puts into model, backup and export directories.

A file is written beside its final path under a temporary name, synced to disk, renamed
over the final path, and the directory entry is synced too: a process killed at any moment
leaves either the old file or the new one, never part of one. A file whose new contents
equal the old ones is left as it was, so a finished run that is run again changes nothing.

The temporary names carry the writer's process id and host, so that leftovers of killed
processes can be told from files that a live process is still writing
(`remove_stale_temporaries`); a file written from another host is never taken for a leftover.
"""

import contextlib
import errno
import fcntl
import filecmp
import json
import os
import re
import shutil
import socket
import uuid

TEMPORARY_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path, expected_size=None):
    """Yields a temporary path beside `path`; once the block has written it, it becomes `path`.

    The temporary name ends with the final file name, so writers that check an extension
    (Keras' `save_weights` wants `.weights.h5`) accept it. If the block raises, the temporary
    file is removed and `path` is left as it was; a write error is raised as an `OSError`
    that names `path`.

    Args:
        path: the file to write.
        expected_size: bytes the file will take, checked to be free on the device before the
            block runs. HDF5 cannot be trusted to fail cleanly when the disk fills under it
            (its file close can crash the process), so its writers say what they need first.

    Example:
    >>> with atomic_path("runs/sst2/model.weights.h5") as temporary:  # doctest: +SKIP
    ...     model.save_weights(temporary)
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    temporary_path = os.path.join(
        directory, f"{TEMPORARY_PREFIX}{owner_tag()}-{uuid.uuid4().hex[:8]}-{name}"
    )
    try:
        if expected_size:
            _reserve(temporary_path, expected_size)
        yield temporary_path
        _sync_file(temporary_path)
        if os.path.isfile(path) and filecmp.cmp(temporary_path, path, shallow=False):
            os.remove(temporary_path)
            return
        os.replace(temporary_path, path)
        sync_directory(directory)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(temporary_path)
        if isinstance(error, OSError) and not isinstance(
            error, (FileNotFoundError, FileExistsError)
        ):
            raise write_error(path, error) from None
        raise


@contextlib.contextmanager
def locked(path):
    """Holds an exclusive lock on the file `path` (created if missing) for the block.

    The lock is released when the block ends, and also when the process dies, since it goes
    with the open file.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def write_bytes(path, data):
    """Writes `data` (bytes) to `path` atomically."""
    with atomic_path(path) as temporary_path:
        with open(temporary_path, "wb") as file:
            file.write(data)


def write_text(path, text):
    """Writes `text` to `path` atomically, in UTF-8."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path, value):
    """Writes `value` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(value, indent=2) + "\n")


def copy_file(source, path):
    """Copies the file `source` to `path` atomically."""
    with atomic_path(path) as temporary_path:
        shutil.copyfile(source, temporary_path)


def _reserve(path, size):
    # Allocating the blocks is the one test of free space that holds for every user and
    # file system quota; the writer then truncates the file and writes it for real.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        fallocate = getattr(os, "posix_fallocate", None)
        if fallocate is None:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        fallocate(descriptor, 0, size)
    except OSError as error:
        # Where the file system cannot allocate ahead, its free space has to do.
        if error.errno == errno.ENOSPC or shutil.disk_usage(os.path.dirname(path)).free < size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
    finally:
        os.close(descriptor)


def _sync_file(path):
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def sync_directory(directory):
    """Makes a rename or removal in `directory` durable, where the platform allows it."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # a platform where directories cannot be opened (Windows)
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems do not sync directories; the rename itself is still atomic
    finally:
        os.close(descriptor)


def remove_stale_temporaries(directory, prefix=TEMPORARY_PREFIX):
    """Removes the entries of `directory` named `<prefix><owner>-...` whose writer has exited."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if name.startswith(prefix) and not writer_is_alive(name[len(prefix) :]):
            path = os.path.join(directory, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(path)


def owner_tag():
    """`<pid>@<host>`: who writes a temporary file or directory, as its name records it."""
    return f"{os.getpid()}@{re.sub(r'[^A-Za-z0-9]', '_', socket.gethostname())}"


def writer_is_alive(name):
    """Whether the writer named at the start of `name` (`<pid>@<host>-...`) may still run.

    Only a process of this host that no longer exists counts as gone; a name without an
    owner, or from another host, counts as alive, so that it is never removed.
    """
    owner = name.split("-", 1)[0]
    pid, _, host = owner.partition("@")
    if not (pid.isascii() and pid.isdigit()) or f"{pid}@{host}" != owner:
        return True
    if owner_tag().partition("@")[2] != host:
        return True
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, under another user
    return True


def write_error(path, error):
    """An `OSError` that says in one line which file could not be written, and why."""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        reason = "no space left on device"
    one_line = OSError(f"Could not write {path}: {reason}")
    one_line.errno = error.errno
    return one_line
