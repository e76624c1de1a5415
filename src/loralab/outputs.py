"""Where loralab may write: it never deletes or overwrites anything it did not write.

Every folder loralab writes carries a marker, `.loralab-output.json`, saying which kind of
output it is (a trained model, an export, an extracted adapter, a study, a suite, a report)
and which of its top-level entries loralab wrote. Before a command writes to its output it
calls `check_output`, which refuses, naming the path and the flag:

- an output that is an existing file, or a symbolic link;
- a folder that is not empty and holds no marker of the same kind (a folder of the user's,
  or another kind of output), unless `overwrite` is given; even then only what loralab
  wrote is ever replaced, and a file of the user's that loralab would write over is refused;
- an output that is, holds or lies inside one of the command's inputs (the base model, the
  fine-tuned model, the adapter being exported, the data).

`output_dir` (over `fileio.atomic_dir`) then builds the new folder beside the old one and swaps it in, with the
entries loralab did not write carried over (as hard links: nothing is copied or moved
while the old folder still exists). Folders written by loralab before the marker existed
are recognised by what they hold (`LEGACY`).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import LoralabError
from .fileio import atomic_dir, write_json

MARKER = ".loralab-output.json"
KINDS = ("model", "export", "extract", "study", "suite", "report", "lowrank")
# Where each kind may also be written: a study's report goes into the study's own folder.
ACCEPTS = {"report": ("report", "study", "suite"), "suite": ("suite",), "study": ("study",)}
class OutputRefused(LoralabError):
    """The output location holds something loralab did not write, or is one of the inputs."""


def read_marker(folder: Path) -> dict | None:
    """The folder's marker, or None where it has none (or an unreadable one)."""
    try:
        marker = json.loads((folder / MARKER).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("kind") in KINDS else None


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except (OSError, ValueError):
        return ""


def _json_keys(path: Path) -> set:
    try:
        value = json.loads(_read(path) or "null")
    except ValueError:
        return set()
    return set(value) if isinstance(value, dict) else set()


def _is_lowrank_record(keys: set) -> bool:
    return "rows" in keys and bool({"headtuned_score", "headtuned_accuracy"} & keys)


# What marks a folder of each kind written by a loralab from before the marker: what only
# loralab writes there (never the mere name of a file a user may have too).
LEGACY = {
    "model": lambda f: {"method", "base_model", "trainable_params"} <= _json_keys(f / "loralab.json"),
    "study": lambda f: "loralab" in _json_keys(f / "environment.json")
    or all(f"\n[{t}]" in _read(f / "config.toml") for t in ("methods", "lora")),
    "report": lambda f: "<title>loralab study report</title>" in _read(f / "report.html"),
    "suite": lambda f: "<title>loralab study report</title>" in _read(f / "report.html"),
    "lowrank": lambda f: _is_lowrank_record(_json_keys(f / "lowrank.json")),
    "extract": lambda f: _read(f / "README.md").startswith("# A LoRA adapter extracted from"),
    "export": lambda f: "\n- loralab\n" in _read(f / "README.md")
    and ((f / "config.json").exists() or (f / "adapter_config.json").exists()),
}


def owned_by_loralab(folder: Path, kind: str) -> bool:
    """True where `folder` is loralab's output of a kind `kind` may write over."""
    marker = read_marker(folder)
    if marker is not None:
        return marker["kind"] in ACCEPTS.get(kind, (kind,))
    return any(LEGACY[k](folder) for k in ACCEPTS.get(kind, (kind,)))


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != MARKER)


def _overlap(output: Path, inputs: Iterable[tuple[str, str | os.PathLike | None]]) -> str | None:
    """A message where `output` is, holds or lies inside one of `inputs` ((flag, path))."""
    out = output.resolve()
    for flag, given in inputs:
        if not given:
            continue
        source = Path(given)
        if not source.exists():  # a Hub id or a glob: nothing on disk to protect
            continue
        source = source.resolve()
        if out == source:
            return f"it is the {flag} input"
        if source in out.parents:
            return f"it lies inside the {flag} input {source}"
        if out in source.parents:
            return f"it holds the {flag} input {source}"
    return None


def data_inputs(data) -> list[tuple[str, str]]:
    """(flag, path) of every data file and folder a [data] table (`config.DataConfig`) reads."""
    import glob

    found = [("--data", data.dir or os.environ.get("LORALAB_DATA") or "")]
    for flag in ("train", "eval"):
        for pattern in getattr(data, flag) or ():
            found += [(f"--{flag}", match) for match in glob.glob(str(pattern))] or [(f"--{flag}", pattern)]
    return [(flag, path) for flag, path in found if path]


def check_output(path: str | os.PathLike, kind: str, *, overwrite: bool = False, flag: str = "--out",
                 inputs: Iterable[tuple[str, str | os.PathLike | None]] = ()) -> Path:
    """Refuse to write `kind` output to `path` where that would delete or overwrite
    anything loralab did not write (see the module's docstring); return the path.

    Args:
        overwrite: the user's `--overwrite`: a non-empty folder loralab did not write may
            be written into; its own files are kept, and any that loralab would replace
            are refused at the write.
        flag: how the user gave `path`, for the message.
        inputs: (flag, path) of every input the command reads; the output may not be,
            hold or lie inside any of them.
    """
    path = Path(path)
    if path.is_symlink():
        raise OutputRefused(f"{path} ({flag}) is a symbolic link: loralab does not write through links. "
                            f"Give the folder it points to ({os.path.realpath(path)}) or another {flag}.")
    clash = _overlap(path, inputs)
    if clash:
        raise OutputRefused(f"{path} ({flag}): {clash}; writing there would replace what the command reads. "
                            f"Give another {flag}.")
    if path.exists() and not path.is_dir():
        raise OutputRefused(f"{path} ({flag}) is an existing file; loralab writes {kind} output to a folder and "
                            f"never replaces a file it did not write. Give a new folder's name.")
    if not path.is_dir():
        return path
    entries = _entries(path)
    if not entries or owned_by_loralab(path, kind):
        return path
    marker = read_marker(path)
    if marker is not None:
        raise OutputRefused(f"{path} ({flag}) holds loralab's {marker['kind']} output, not {kind} output; "
                            f"give another {flag}.")
    if overwrite:
        return path
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    count = f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}"
    raise OutputRefused(f"{path} ({flag}) is not empty ({count}: {shown}) and was not written "
                        f"by loralab; nothing in it is deleted or replaced. Give a new or empty folder, or pass "
                        f"--overwrite to write beside what is there (loralab then replaces only what it wrote).")


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False, flag: str = "--output",
                      inputs: Iterable[tuple[str, str | os.PathLike | None]] = ()) -> Path:
    """Refuse to write the file `path` where it exists (unless `overwrite`), is a link or a
    folder, or is one of `inputs`."""
    path = Path(path)
    clash = _overlap(path, inputs)
    if clash:
        raise OutputRefused(f"{path} ({flag}): {clash}. Give another {flag}.")
    if path.is_symlink():
        raise OutputRefused(f"{path} ({flag}) is a symbolic link: loralab does not write through links.")
    if path.is_dir():
        raise OutputRefused(f"{path} ({flag}) is a folder; give a file name.")
    if path.exists() and not overwrite:
        raise OutputRefused(f"{path} ({flag}) exists; loralab does not replace it. Give a new file name, or pass "
                            "--overwrite to replace it.")
    return path


def claim_folder(path: str | os.PathLike, kind: str, names: Iterable[str] = ()) -> None:
    """Mark `path` (created if missing) as loralab's `kind` output, for the writers that
    fill a folder file by file (a study, a suite, a report), which will write the entries
    `names`. In a folder of the user's that `check_output` let through with `overwrite`,
    any of `names` already there is refused before anything is written; the marker then
    lists what the folder held (`foreign`), and `refuse_foreign` keeps later writers off
    those entries."""
    path = Path(path)
    marker = read_marker(path) if path.is_dir() else None
    if marker is not None and marker["kind"] in ACCEPTS.get(kind, (kind,)):
        refuse_foreign(path, names)
        return
    if path.is_dir() and owned_by_loralab(path, kind):  # written before the marker: all of it loralab's
        return
    foreign = _entries(path) if path.is_dir() else []
    _refuse(path, sorted(set(foreign) & set(names)))
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / MARKER, {"kind": kind, "foreign": foreign})


def refuse_foreign(path: str | os.PathLike, names: Iterable[str]) -> None:
    """Refuse where any of `names` (entries of `path` about to be written) is the user's:
    present in the folder before loralab claimed it."""
    marker = read_marker(Path(path)) or {}
    _refuse(Path(path), sorted(set(marker.get("foreign") or ()) & set(names)))


def _refuse(path: Path, clash: list[str]) -> None:
    if clash:
        raise OutputRefused(f"{path}: {', '.join(clash)} {'is' if len(clash) == 1 else 'are'} not loralab's and "
                            "would be replaced; move them or give another output folder. Nothing was written.")


@contextmanager
def output_dir(path: str | os.PathLike, kind: str) -> Iterator[Path]:
    """`fileio.atomic_dir` for loralab's `kind` output: the new folder is marked, listing
    what loralab wrote, and whatever else the old folder held (the user's files) is carried
    over into it untouched; a file of the user's that the new folder would replace is
    refused (`OutputRefused`) and nothing changes."""
    with atomic_dir(path, finish=lambda old, new: _carry_over(old, new, kind)) as tmp:
        yield tmp


def _carry_over(path: Path, new: Path, kind: str) -> None:
    """Mark `new` as loralab's `kind` output listing what it holds, and put into it, as hard
    links, every entry of the old `path` that loralab did not write."""
    written = sorted(p.name for p in new.iterdir() if p.name != MARKER)
    if path.is_dir():
        marker = read_marker(path)
        if marker is not None and "files" in marker:
            ours = set(marker["files"])
        elif marker is not None:  # a folder of the user's claimed with --overwrite: what it held is theirs
            ours = {p.name for p in path.iterdir()} - set(marker.get("foreign") or ())
        elif owned_by_loralab(path, kind):  # written before the marker: what it writes now, it wrote then
            ours = set(written)
        else:  # a folder of the user's written into with --overwrite
            ours = set()
        for entry in sorted(path.iterdir()):
            if entry.name == MARKER or entry.name in ours:
                continue
            if entry.name in written:
                raise OutputRefused(f"{entry} is not loralab's and would be replaced; move it or give another "
                                    "output folder. Nothing was written.")
            _link_tree(entry, new / entry.name)
    write_json(new / MARKER, {"kind": kind, "files": written})


def _link_tree(source: Path, dest: Path) -> None:
    """`source` again at `dest`: files as hard links (copies where the file system has
    none), folders made anew, symbolic links as links with the same target."""
    if source.is_symlink():
        os.symlink(os.readlink(source), dest)
    elif source.is_dir():
        dest.mkdir()
        shutil.copystat(source, dest)
        for child in source.iterdir():
            _link_tree(child, dest / child.name)
    else:
        try:
            os.link(source, dest)
        except OSError:
            shutil.copy2(source, dest)
