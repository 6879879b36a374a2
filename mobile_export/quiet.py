"""Backend log lines that are not about the user's model, hidden one by one.

Each entry names the logger that emits the line and the exact message shape, with why it is
harmless; everything else those loggers say still shows (a torchao kernel that fails for
another reason, any other torch warning). `mobile-export --warnings` shows everything.

Measured on torch 2.13 / torchao (pulled in by executorch) / executorch 1.5.1:
- torchao/__init__.py loads every `_C*.so` it ships and logs `Failed to load FILE: ...` at
  WARNING for the ones built for another Python or for CUDA (`_C_mxfp8.cpython-310-...`,
  `_C_cutlass_90a.abi3.so`); the CPU path does not use them.
- torch/utils/_pytree.py warns that registering an Enum as a pytree constant is deprecated
  (torchao registers its `KernelPreference` enum on import).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Noise:
    logger: str
    pattern: str  # regex matched against the formatted message (re.search)
    why: str


NOISE = (
    Noise(
        "torchao",
        r"^Failed to load \S*/torchao/_C[^/\s]*\.so: ",
        "torchao's optional CUDA / other-Python kernels; the CPU export path does not use them",
    ),
    Noise(
        "torch.utils._pytree",
        r"is an Enum subclass and is now natively supported by torch\.compile",
        "a deprecation notice about torchao's own pytree registration, raised on import",
    ),
)


class _DropMatching(logging.Filter):
    def __init__(self, patterns: list[str]):
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge: let it through
            return True
        return not any(p.search(message) for p in self.patterns)


_installed: dict[str, _DropMatching] = {}


def hide_backend_noise() -> None:
    """Attach one filter per noisy logger (idempotent). Logger filters run where a record is
    created, before it propagates to torch's own handler, so nothing else is affected."""
    by_logger: dict[str, list[str]] = {}
    for noise in NOISE:
        by_logger.setdefault(noise.logger, []).append(noise.pattern)
    for name, patterns in by_logger.items():
        if name in _installed:
            continue
        flt = _DropMatching(patterns)
        logging.getLogger(name).addFilter(flt)
        _installed[name] = flt


def show_backend_noise() -> None:
    """Undo `hide_backend_noise` (tests; `--warnings` never installs it)."""
    for name, flt in list(_installed.items()):
        logging.getLogger(name).removeFilter(flt)
        del _installed[name]
