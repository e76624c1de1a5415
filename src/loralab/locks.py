"""One writer per output folder: a lock beside it (`.NAME.lock`, an flock through the
`filelock` library), held while `loralab run` or `loralab train --out` writes there and removed after.

Two studies on one folder used to train every run into the same folders, each removing
the other's work. The lock is the operating system's: it goes with its process, so the
lock of a killed process never blocks. Its holder names itself in `.NAME.lock.owner`
(process id, host, command, start), which a second process's error repeats.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import LoralabError
from .fileio import write_json


class FolderInUse(LoralabError):
    """Another process holds the output folder's lock."""


def _owner(path: Path) -> str:
    try:
        info = json.loads(path.read_text("utf-8"))
        return (f"process {info['pid']} on {info['host']}, `{info['command']}`, since {info['since']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said which yet"


@contextmanager
def output_lock(target: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of the output folder `target` (which need not exist yet) for the block.

    Raises:
        FolderInUse: at once, naming the folder and the process that holds it.
    """
    from filelock import FileLock, Timeout

    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_file = target.parent / f".{target.name}.lock"
    owner = target.parent / f".{target.name}.lock.owner"
    lock = FileLock(lock_file, timeout=0, is_singleton=False)
    try:
        lock.acquire()
    except Timeout as err:
        raise FolderInUse(f"{target} is in use by another loralab process ({_owner(owner)}): two writers would "
                          "replace each other's runs. Wait for it to finish, or give another --out.") from err
    try:
        write_json(owner, {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                           "since": dt.datetime.now().isoformat(timespec="seconds")})
        yield target
    finally:
        # Removed while still held, so nothing is left beside the folder; a process that
        # opened the old file just then fails at once (no one waits for the lock).
        owner.unlink(missing_ok=True)
        lock_file.unlink(missing_ok=True)
        lock.release()
