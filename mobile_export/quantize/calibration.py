"""Calibration images for post-training quantization, shared by ExecuTorch int8 (PT2E)
and Core ML w8a8: real photos through the model's own resize/crop/normalization.

Why real photos: activation ranges observed on noise are not the ranges of photographs,
and int8 outputs degrade sharply outside the calibrated range.

Fallback without a folder: the photos that ship inside scikit-image and scikit-learn
(`preprocess.bundled_photos()`), with a warning, because a dozen generic photos are a
weak stand-in for the app's own images."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ImageError
from ..models.registry import Preprocess
from ..preprocess import bundled_photos, find_images, iter_inputs, load_input, sample_evenly

FALLBACK_WARNING = (
    "WARNING: no --calibration folder given; calibrating int8 on the {n} sample photos bundled with "
    "scikit-image/scikit-learn. Accuracy on your own images may suffer: pass --calibration DIR with "
    "~100 images like the ones the app will see."
)


class StreamedInputs(Sequence):
    """The calibration inputs, decoded from their files on each access (deterministic), so
    calibrating on 10,000 images holds one in memory at a time instead of all of them
    (~0.6 MB each at 224 px); docs/robustness.md has the measurements."""

    def __init__(self, paths: list[Path], pre: Preprocess, normalized: bool):
        self.paths, self.pre, self.normalized = list(paths), pre, normalized

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return load_input(self.paths[index], self.pre, self.normalized)


@dataclass
class CalibrationSet:
    inputs: Sequence[np.ndarray]  # each float32 1x3xHxW, as the exported graph receives it
    paths: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    source: str = "folder"  # "folder" | "bundled"
    normalized: bool = True  # mean/std applied (False when the graph normalizes itself)
    folder: Path | None = None

    def record(self) -> dict:
        """What the manifest keeps: enough to rebuild the same set (for the quantized
        reference in verify): the folder, and the names of the files used."""
        return {
            "source": self.source,
            "folder": str(self.folder.resolve()) if self.folder is not None else None,
            "images": len(self.inputs),
            "skipped": len(self.skipped),
            "files": [p.name for p in self.paths],
        }

    def digest_record(self) -> dict:
        """record() for sets too large to list: the file names' sha256 instead of the names."""
        import hashlib

        names = "\n".join(p.name for p in self.paths).encode()
        record = {k: v for k, v in self.record().items() if k != "files"}
        return {**record, "files_sha256": hashlib.sha256(names).hexdigest()}


def load_calibration(
    folder: str | Path | None,
    pre: Preprocess,
    *,
    limit: int = 64,
    normalized: bool = True,
    log: Callable[[str], None] = lambda _m: None,
    progress: bool | None = None,
) -> CalibrationSet:
    """Images from `folder` (recursive; jpg/png/webp/bmp), a bounded even sample of at most
    `limit`, through the model's preprocessing. Unreadable files are skipped and counted;
    an empty folder or one where nothing decodes raises ImageError. `folder=None` uses the
    bundled photos and warns through `log`. `progress`: tqdm bar on stderr (None = only on
    a terminal)."""
    if folder is None:
        paths = bundled_photos()
        if not paths:
            raise ImageError(
                "no --calibration folder given and no bundled sample photos found (install scikit-image); pass --calibration DIR"
            )
        source = "bundled"
        log(FALLBACK_WARNING.format(n=len(paths)))
    else:
        paths = sample_evenly(find_images(folder), limit)
        source = "folder"
    skipped: list[tuple[Path, str]] = []
    used: list[Path] = []
    for path, _x in _progress(iter_inputs(paths, pre, normalized, skipped), len(paths), progress):
        used.append(path)  # only the name: the pixels are decoded again when consumed
    inputs = StreamedInputs(used, pre, normalized)
    if not inputs:
        where = "the bundled photos" if folder is None else repr(str(folder))
        raise ImageError(
            f"none of the {len(paths)} calibration images in {where} could be read; add readable jpg/png/webp/bmp files"
        )
    if skipped:
        log(f"calibration: skipped {len(skipped)} unreadable file(s), e.g. {skipped[0][1]}")
    log(
        f"calibration: {len(inputs)} image(s) from {'bundled sample photos' if folder is None else str(folder)}"
    )
    return CalibrationSet(
        inputs, used, skipped, source, normalized, Path(folder) if folder is not None else None
    )


def _progress(iterable, total: int, enabled: bool | None):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a missing bar must not stop an export
        return iterable
    return tqdm(
        iterable,
        total=total,
        desc="calibrating",
        unit="img",
        file=sys.stderr,
        disable=None if enabled is None else not enabled,
        leave=False,
    )


def to_tensor(x: np.ndarray):
    """float32 torch tensor with standard strides. numpy may give a size-1 axis stride 0,
    which torch keeps and ExecuTorch's serializer rejects ("0 in strides")."""
    import torch

    return torch.from_numpy(np.array(x, dtype=np.float32, order="C", copy=True))
