"""Atomic file writes: a crash never leaves a truncated file under its final name.

Every file and folder loralab writes goes through `atomic_path` or `atomic_dir`: written
under a temporary name beside its final one (`.NAME.PID.XXXX.tmp`), then renamed over it.
So a killed writer or a full disk leaves the earlier complete file in place; the
temporary name carries the writer's process id, so the next write removes what a killed
writer left. Files get the modes any tool's files get (0644 under umask 022): nothing
loralab writes is a secret.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import LoralabError

DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(LoralabError):
    """The disk (or the user's quota) filled while writing; the earlier file is kept."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clear_stale(path: Path) -> None:
    """Remove the temporary files and folders that writers of `path` killed before they
    finished left beside it (their process is gone), and put back a folder whose writer was
    killed between moving it aside and moving its new version in."""
    old = path.with_name(f".{path.name}.old")
    if old.is_dir() and not path.exists():
        os.replace(old, path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def _is_disk_full(err: BaseException | None) -> bool:
    """A full disk or quota, raised as an OSError or wrapped by a library (safetensors and
    torch report it in their own exception types, with the system's message)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            return True
        if any(os.strerror(code) in str(err) for code in DISK_FULL):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


@contextmanager
def _full_disk_named(path: Path) -> Iterator[None]:
    """A full disk raised in the block, however a library wrapped it, as a `DiskFullError`
    naming `path`."""
    try:
        yield
    except Exception as err:
        if isinstance(err, DiskFullError) or not _is_disk_full(err):
            raise
        why = os.strerror(err.errno) if isinstance(err, OSError) and err.errno else str(err).splitlines()[0]
        raise DiskFullError(f"{path}: the disk is full ({why}) while writing it; the earlier version, if any, "
                            "is unchanged. Free some space and run the same command again.") from err


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` on success.

    The temporary file lives in the same directory so the final `os.replace` is atomic.
    On an exception the temporary file is removed and `path` is left as it was; a full
    disk is a `DiskFullError` naming `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _full_disk_named(path):
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike, finish: Callable[[Path, Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` when the block succeeds.

    A crash or a full disk inside the block leaves `path` as it was, and the temporary
    folder is removed (by the next writer, where the crash was a kill). Every file written
    in the block gets the umask's mode (some writers make 0600 files). `finish(path, tmp)`
    runs last before the swap (`outputs.output_dir` marks the folder and carries the
    user's files over); an exception there leaves `path` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        with _full_disk_named(path):
            yield tmp
            _follow_umask(tmp)
            if finish is not None:
                finish(path, tmp)
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _follow_umask(folder: Path) -> None:
    """Give `folder` and everything in it the modes of the umask (mkdtemp makes 0700, and
    some writers, safetensors among them, 0600 files)."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(Path(root) / name, 0o777 & ~mask)
        for name in files:
            if not (Path(root) / name).is_symlink():
                os.chmod(Path(root) / name, 0o666 & ~mask)
