"""Nothing half-written survives: temp path + rename, on errors, interrupts and full disks."""

import errno
import os

import pytest

from mobile_export.errors import MobileExportError, OutputExistsError
from mobile_export.fsutil import atomic_path, ensure_writable_dir, sha256_file, write_bytes_atomic


def _leftovers(d):
    return sorted(p.name for p in d.iterdir())


def test_success_renames_into_place(tmp_path):
    dest = tmp_path / "a.bin"
    with atomic_path(dest) as tmp:
        assert tmp != dest and tmp.parent.parent == tmp_path
        tmp.write_bytes(b"hello")
        assert not dest.exists()
    assert dest.read_bytes() == b"hello"
    assert _leftovers(tmp_path) == ["a.bin"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_error_or_interrupt_leaves_old_file_and_no_temp(tmp_path, exc):
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"old")
    with pytest.raises(type(exc)):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise exc
    assert dest.read_bytes() == b"old"
    assert _leftovers(tmp_path) == ["a.bin"]


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path):
    dest = tmp_path / "a.bin"
    with pytest.raises(MobileExportError, match="disk full") as err:
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert "\n" not in str(err.value)
    assert _leftovers(tmp_path) == []


def test_directories_are_replaced_whole(tmp_path):
    dest = tmp_path / "m.mlpackage"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert _leftovers(dest) == ["new.txt"]
    assert _leftovers(tmp_path) == ["m.mlpackage"]


def test_existing_file_needs_force(tmp_path):
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="--force"):
        write_bytes_atomic(dest, b"new", force=False)
    assert dest.read_bytes() == b"old"
    write_bytes_atomic(dest, b"new", force=True)
    assert dest.read_bytes() == b"new"


def test_unwritable_output_folder_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MobileExportError, match="cannot create output folder"):
        ensure_writable_dir(blocker / "sub")
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(MobileExportError, match="not writable"):
            ensure_writable_dir(ro)


def test_sha256_of_directory_covers_names_and_content(tmp_path):
    d = tmp_path / "pkg"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "w.bin").write_bytes(b"abc")
    h1 = sha256_file(d)
    (d / "sub" / "w.bin").write_bytes(b"abd")
    h2 = sha256_file(d)
    (d / "sub" / "w.bin").rename(d / "sub" / "v.bin")
    h3 = sha256_file(d)
    assert len({h1, h2, h3}) == 3
