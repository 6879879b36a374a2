"""Write artifacts so that nothing half-written survives: a temporary path beside the
destination, then one rename. Disk full or Ctrl-C leaves the old file (or none)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import MobileExportError, OutputExistsError


def sha256_file(path: str | Path) -> str:
    """sha256 of a file, or of every file of a directory (a .mlpackage) in sorted order,
    each prefixed by its relative path."""
    p = Path(path)
    digest = hashlib.sha256()
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            digest.update(f.relative_to(p).as_posix().encode() + b"\0")
            _update(digest, f)
    else:
        _update(digest, p)
    return digest.hexdigest()


def _update(digest, path: Path) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


def size_bytes(path: str | Path) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(q.stat().st_size for q in p.rglob("*") if q.is_file())
    return p.stat().st_size


def ensure_writable_dir(directory: str | Path) -> Path:
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MobileExportError(
            f"cannot create output folder {str(d)!r} ({exc.strerror}); choose another --out"
        ) from None
    if not os.access(d, os.W_OK | os.X_OK):
        raise MobileExportError(
            f"output folder {str(d)!r} is not writable; choose another --out or fix its permissions"
        )
    return d


def check_destination(dest: str | Path, force: bool) -> None:
    if Path(dest).exists() and not force:
        raise OutputExistsError(
            f"{str(dest)!r} already exists; pass --force to replace it or choose another --out"
        )


@contextlib.contextmanager
def atomic_path(dest: str | Path, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success rename it onto `dest` (file or
    directory), on any error or interrupt remove it. The destination is never half-written."""
    dest = Path(dest)
    check_destination(dest, force)
    ensure_writable_dir(dest.parent)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    tmp = tmp_dir / dest.name
    try:
        yield tmp
        if not tmp.exists():
            raise MobileExportError(f"internal error: nothing was written for {dest.name}")
        _replace(tmp, dest)
    except OSError as exc:
        if _write_errno(exc) in (errno.ENOSPC, errno.EDQUOT):
            raise MobileExportError(
                f"disk full while writing {str(dest)!r}; free space or choose another --out"
            ) from None
        if _write_errno(exc) in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise MobileExportError(
                f"cannot write {str(dest)!r} ({os.strerror(_write_errno(exc))}); choose another --out or fix its permissions"
            ) from None
        raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _write_errno(exc: OSError) -> int | None:
    """The errno of a failed write; shutil.copytree (coremltools' save) reports it only
    inside the messages of the shutil.Error it collects."""
    if exc.errno is not None:
        return exc.errno
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        for entry in exc.args[0]:
            why = str(entry[-1]) if isinstance(entry, tuple) else str(entry)
            for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
                if f"[Errno {code}]" in why:
                    return code
    return None


def _replace(tmp: Path, dest: Path) -> None:
    if tmp.is_dir():
        # Directories cannot be renamed over each other: move the old one aside first.
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
            os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except BaseException:
            if old is not None:
                os.replace(old, dest)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(tmp, dest)


def write_bytes_atomic(dest: str | Path, data: bytes, force: bool = True) -> Path:
    with atomic_path(dest, force) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_text_atomic(dest: str | Path, text: str, force: bool = True) -> Path:
    return write_bytes_atomic(dest, text.encode("utf-8"), force)
