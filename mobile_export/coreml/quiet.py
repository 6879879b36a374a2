"""Silence coremltools (and torch.export) while they work: the library never prints."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings


@contextlib.contextmanager
def quiet():
    """coremltools and torch.export print progress bars, version warnings and load failures on
    stderr (some through handlers that hold the original stream); the library never prints, so
    file descriptors 1 and 2 point at /dev/null while they work. Errors still propagate."""
    ct_logger = logging.getLogger("coremltools")
    level = ct_logger.level
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull, fd)
        with (
            open(os.devnull, "w") as sink,
            contextlib.redirect_stderr(sink),
            contextlib.redirect_stdout(sink),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            ct_logger.setLevel(logging.ERROR)
            yield
    finally:
        ct_logger.setLevel(level)
        for fd, copy_fd in saved:
            os.dup2(copy_fd, fd)
            os.close(copy_fd)
        os.close(devnull)
