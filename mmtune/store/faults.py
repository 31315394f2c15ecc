"""Storage faults, named: a full or read-only disk, and damaged files in a sweep folder.

* :func:`check_writable` is the write probe run before a sweep (or a resume) starts: a small file
  written and deleted where the sweep will write, and, on a local disk, a floor on the free space.
  A full or read-only storage is one :class:`~mmtune.errors.StorageError` naming the path and its
  free space, before Ray starts, instead of tracebacks from every trial's first checkpoint.
* :func:`write_atomic` writes a small file (``spec.json``, ``driver.json``) through a temporary name
  in the same folder and a rename, like the results tables (:mod:`mmtune.store.writer`): a crash or
  a full disk leaves the old file or none, never a truncated one.
* :func:`is_storage_error` tells an exception (or a stored error text) caused by the storage — no
  space, read-only, over quota — from a trial's own failure: such a trial is not a verdict on its
  configuration, so ``mmtune resume`` runs it again.
* :func:`damaged_table` is the error for a table that exists but cannot be read, with the way back.

Only the standard library and pyarrow: the report side imports it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid

import pyarrow.fs as pafs

from mmtune.errors import Problem, StorageError

__all__ = [
    "MIN_FREE_BYTES", "STORAGE_ERRNOS", "check_writable", "damaged_table", "first_line", "free_space", "human_bytes",
    "is_storage_error", "storage_reason", "write_atomic",
]

# A sweep needs room for Ray's experiment state, two checkpoints per trial and the tables: below
# this much free space on a local disk it would fail at the first checkpoints, so it is not started.
MIN_FREE_BYTES = 16 * 2**20

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT})
_REASONS = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
            errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}
# pyarrow and Ray pass the errno in the text only ("[Errno 28] Error writing bytes to file"); a
# trial's error reaches the driver (and the trials table) as text.
_STORAGE_TEXT = re.compile(r"\[errno (28|30|122)\]|no space left on device|read-only file system|disk quota exceeded",
                           re.IGNORECASE)


def _open(location: str) -> tuple[pafs.FileSystem, str]:
    from mmtune.store.reader import open_storage

    return open_storage(location)


def human_bytes(n: float) -> str:
    """``0 B``, ``512 KiB``, ``1.0 MiB``, ``37.2 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _local_dir(location: str) -> str | None:
    """The nearest existing folder of a local path (None for a URI): what ``disk_usage`` can measure."""
    text = os.fspath(location)
    if "://" in text and not text.startswith("file://"):
        return None
    path = os.path.abspath(os.path.expanduser(text.removeprefix("file://")))
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return path


def free_space(location: str) -> str:
    """``"1.0 MiB free of 1.0 MiB"`` for the disk that holds ``location``; ``""`` where unknown (a URI)."""
    folder = _local_dir(location)
    if folder is None:
        return ""
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return ""
    return f"{human_bytes(usage.free)} free of {human_bytes(usage.total)}"


def _errno_of(err: BaseException) -> int | None:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            return err.errno
        match = _STORAGE_TEXT.search(str(err))
        if match and match.group(1):
            return int(match.group(1))
        err = err.__cause__ or err.__context__ or getattr(err, "cause", None)
    return None


def is_storage_error(err: BaseException | str | None) -> bool:
    """Whether ``err`` (an exception, its chain, or an error text) is the storage's fault: no space,
    read-only, over quota."""
    if err is None:
        return False
    if isinstance(err, str):
        return bool(_STORAGE_TEXT.search(err))
    code = _errno_of(err)
    if code is not None and code in STORAGE_ERRNOS:
        return True
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if _STORAGE_TEXT.search(str(err)):
            return True
        err = err.__cause__ or err.__context__ or getattr(err, "cause", None)
    return False


def storage_reason(err: BaseException) -> str:
    """``"no space left on device"``, ``"read-only file system"`` … or the error's first line."""
    code = _errno_of(err)
    if code in _REASONS:
        return _REASONS[code]
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _with_space(reason: str, location: str) -> str:
    space = free_space(location)
    return f"{reason}; {space}" if space else reason


def check_writable(location: str, *, min_free_bytes: int = MIN_FREE_BYTES, then: str = "") -> None:
    """The write probe: write and delete a small file in ``location`` (created if missing), and on a
    local disk require ``min_free_bytes`` free. Raise :class:`StorageError` naming the path, the free
    space and ``then`` (what to do after fixing it) when the storage cannot take a sweep."""
    fs, base = _open(location)
    base = base.rstrip("/")
    probe = f"{base}/.mmtune-write-probe-{uuid.uuid4().hex}"
    then = f", then {then}" if then else ""
    created = _first_missing(fs, base)  # removed again below: the probe leaves nothing behind
    try:
        fs.create_dir(base, recursive=True)
        with fs.open_output_stream(probe) as out:
            out.write(b"\0" * 4096)
        fs.delete_file(probe)
    except OSError as err:
        _quietly(fs.delete_file, probe)
        if created:
            _quietly(fs.delete_dir, created)
        code = _errno_of(err)
        if not is_storage_error(err) and code not in (errno.EACCES, errno.EPERM):
            raise
        fix = "Free some space" if code in (errno.ENOSPC, errno.EDQUOT) else "Make it writable"
        raise StorageError(Problem(location, (f"cannot be written ({_with_space(storage_reason(err), location)}). "
                                              f"{fix} or pass another --storage{then}."))) from None
    if created:
        fs.delete_dir(created)
    folder = _local_dir(location)
    if folder is not None and min_free_bytes > 0:
        usage = shutil.disk_usage(folder)
        if usage.free < min_free_bytes:
            raise StorageError(Problem(location, (
                f"only {human_bytes(usage.free)} free (of {human_bytes(usage.total)}); a sweep needs at least "
                f"{human_bytes(min_free_bytes)} for Ray's experiment state, the trials' checkpoints and the "
                f"results tables. Free some space or pass another --storage{then}.")))


def _quietly(call, path: str) -> None:
    try:
        call(path)
    except OSError:
        pass


def _first_missing(fs: pafs.FileSystem, path: str) -> str | None:
    """The topmost folder of ``path`` that does not exist yet (None if it exists, or on object stores,
    where folders are not made)."""
    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    missing = None
    while path and fs.get_file_info(path).type == pafs.FileType.NotFound:
        missing, parent = path, path.rsplit("/", 1)[0]
        if parent == path:
            break
        path = parent
    return missing


def write_atomic(location: str, data: bytes) -> None:
    """Write ``data`` to the file ``location`` (a local path or a URI) through a temporary name in
    the same folder and a rename: readers see the old file or the new one, never a part."""
    fs, path = _open(location)
    folder, _, name = path.rpartition("/")
    temp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    fs.create_dir(folder, recursive=True)
    try:
        with fs.open_output_stream(temp) as out:
            out.write(data)
        fs.move(temp, path)
    except BaseException:
        _quietly(fs.delete_file, temp)
        raise


def first_line(err: BaseException) -> str:
    """The first non-blank line of an error's text (pyarrow's are several lines long)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0][:200] if lines else type(err).__name__


def damaged_table(shown: str, err: BaseException) -> StorageError:
    """The error for a results table that exists but cannot be read, with how to get it back."""
    why = first_line(err)
    folder = shown.rsplit("/", 1)[0]
    return StorageError(Problem(shown, (
        f"is damaged and cannot be read ({why}). `mmtune resume {folder}` rebuilds the sweep's tables: from "
        "Ray Tune's experiment state where that is intact, and by running again the trials whose results "
        "cannot be rebuilt. Or restore the file from a backup.")))
