"""What loralab leaves on disk: files that follow the umask, a full disk that keeps the
earlier file and leaves no temporary one, and temporaries of killed writers cleared."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loralab.fileio import DiskFullError, atomic_dir, atomic_path, write_json, write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_files_and_folders_follow_the_umask(tmp_path, umask_022):
    write_json(tmp_path / "results.json", {"rows": []})
    with atomic_dir(tmp_path / "model") as folder:
        (folder / "weights.bin").write_bytes(b"x")
    assert oct((tmp_path / "results.json").stat().st_mode & 0o777) == "0o644"
    assert oct((tmp_path / "model").stat().st_mode & 0o777) == "0o755"
    assert oct((tmp_path / "model" / "weights.bin").stat().st_mode & 0o777) == "0o644"
    os.umask(0o077)  # a user who wants private files gets them
    write_text(tmp_path / "private.md", "x")
    assert oct((tmp_path / "private.md").stat().st_mode & 0o777) == "0o600"


def test_a_report_folder_is_readable_by_others(tmp_path, umask_022):
    from loralab.report import write_report
    from test_report import hand_made

    write_report(hand_made(tmp_path))
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir() if p.is_file()}
    assert modes and all(mode == 0o644 for mode in modes.values()), modes


def _no_temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


def test_enospc_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    """A write that fails with ENOSPC (a wrapper standing in for a full disk): the earlier
    file stays whole, no temporary is left, the error names the file and says the disk is full."""
    target = tmp_path / "results.json"
    write_json(target, {"old": True})

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(DiskFullError, match="results.json: the disk is full") as caught:
        write_json(target, {"new": True})
    assert isinstance(caught.value.__cause__, OSError)  # the cause is kept for --debug
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": True} and _no_temporaries(tmp_path) == []


def test_edquot_and_a_library_s_wrapped_disk_full_error_are_said_so(tmp_path):
    with pytest.raises(DiskFullError, match="model: the disk is full"):
        with atomic_dir(tmp_path / "model"):
            raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                               f"\"{os.strerror(errno.ENOSPC)}\" }})")
    with pytest.raises(DiskFullError):
        with atomic_path(tmp_path / "x.json"):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (the test runs as root where it may mount one), else skipped."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root, or no permission)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_keeps_results_and_report_and_exits_2(small_disk, run_cli):
    from test_report import hand_made

    study = hand_made(small_disk)
    write_text(small_disk / "report.md", "the earlier report\n")
    results = (study / "results.json").read_text()
    (small_disk / "filler").write_bytes(b"x" * (200 * 1024))  # leave too little room for the plots
    code, out, err = run_cli("report", study)
    assert code == 2, (out, err)
    assert "the disk is full" in err and str(small_disk) in err and "Traceback" not in err
    assert (small_disk / "report.md").read_text() == "the earlier report\n"
    assert (study / "results.json").read_text() == results
    assert _no_temporaries(small_disk) == []
    # a big write on the full disk: the earlier results.json survives whole
    with pytest.raises(DiskFullError):
        write_json(study / "results.json", {"rows": ["x" * 1000] * 1000})
    assert (study / "results.json").read_text() == results and _no_temporaries(small_disk) == []


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "report.md"
    script = ("import os, sys; from loralab.fileio import atomic_path, atomic_dir\n"
              "with atomic_dir(sys.argv[1] + '-dir') as d:\n"
              "    (d / 'f').write_text('half')\n"
              "    with atomic_path(sys.argv[1]) as tmp:\n"
              "        tmp.write_text('half')\n"
              "        os._exit(9)\n")  # killed mid-write: nothing cleans up
    assert subprocess.run([sys.executable, "-c", script, str(target)]).returncode == 9
    assert len(_no_temporaries(tmp_path)) == 2  # what a kill leaves
    write_text(target, "whole")
    with atomic_dir(tmp_path / "report.md-dir") as d:
        (d / "f").write_text("whole")
    assert _no_temporaries(tmp_path) == [] and target.read_text() == "whole"


def test_a_folder_moved_aside_by_a_killed_writer_comes_back(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w").write_text("complete")
    os.replace(tmp_path / "model", tmp_path / ".model.old")  # killed between the two renames
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "model"):
            raise RuntimeError("this write fails too")
    assert (tmp_path / "model" / "w").read_text() == "complete"
