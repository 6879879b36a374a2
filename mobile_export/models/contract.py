"""Which preprocessing contract a checkpoint was trained with, and where that fact came from.

A wrong contract is invisible to parity checks (the reference is fed the same wrong input),
so every contract carries its origin and whether it was assumed; the manifest records both
and the CLI says so in one line when a user's file did not state it.

Where a contract is read, first match wins:
1. `--mean/--std/--interpolation/--crop-pct` (a `ContractOverride`), field by field, over 2-5;
2. our own safetensors metadata, key "preprocess" (JSON: resize, crop, interpolation, mean, std);
3. `config.json` beside the file (Hugging Face hub layout of timm models):
   {"pretrained_cfg": {"mean", "std", "interpolation", "crop_pct", "input_size"}} (or those keys
   at the top level);
4. a published checkpoint with the same sha256 (it is that checkpoint);
5. otherwise assumed: the published checkpoint of the same format, else the variant's default.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UsageError, WeightsError
from .registry import Preprocess

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class ContractOverride:
    """What the user stated on the command line; None = not stated. Validated when built."""

    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None

    def __post_init__(self):
        for flag, values in (("--mean", self.mean), ("--std", self.std)):
            if values is not None:
                _check_triple(values, flag, positive=flag == "--std")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise UsageError(
                f"--interpolation {self.interpolation!r} is unknown; choose one of: {', '.join(INTERPOLATIONS)}"
            )
        if self.crop_pct is not None and not (math.isfinite(self.crop_pct) and 0.0 < self.crop_pct <= 1.0):
            raise UsageError(f"--crop-pct must be in (0, 1] (crop / resize, e.g. 0.875), got {self.crop_pct}")

    @classmethod
    def from_text(
        cls,
        mean: str | None = None,
        std: str | None = None,
        interpolation: str | None = None,
        crop_pct: float | None = None,
    ) -> ContractOverride:
        return cls(parse_triple(mean, "--mean"), parse_triple(std, "--std"), interpolation, crop_pct)

    def given(self) -> list[str]:
        names = {
            "mean": "--mean",
            "std": "--std",
            "interpolation": "--interpolation",
            "crop_pct": "--crop-pct",
        }
        return [flag for key, flag in names.items() if getattr(self, key) is not None]

    def apply(self, base: Preprocess) -> Preprocess:
        pre = base
        if self.mean is not None:
            pre = replace(pre, mean=self.mean)
        if self.std is not None:
            pre = replace(pre, std=self.std)
        if self.interpolation is not None:
            pre = replace(pre, interpolation=self.interpolation)
        if self.crop_pct is not None:
            pre = replace(pre, resize=max(pre.crop, int(round(pre.crop / self.crop_pct))))
        return pre


def parse_triple(text: str | None, flag: str) -> tuple[float, float, float] | None:
    """ "0.485,0.456,0.406" -> a checked 3-tuple (R, G, B)."""
    if text is None:
        return None
    parts = [p for p in str(text).replace(" ", ",").split(",") if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise UsageError(
            f"{flag} {text!r} is not three numbers; write R,G,B e.g. {flag} 0.485,0.456,0.406"
        ) from None
    return _check_triple(values, flag, positive=flag == "--std")


def _check_triple(values, flag: str, positive: bool) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise UsageError(f"{flag} takes 3 values (R,G,B), got {len(values)}; e.g. {flag} 0.485,0.456,0.406")
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{flag} values must be finite numbers, got {values}")
    if positive and not all(v > 0 for v in values):
        raise UsageError(
            f"{flag} values must be positive (they divide the input), got {', '.join(f'{v:g}' for v in values)}"
        )
    return values


@dataclass(frozen=True)
class Contract:
    preprocess: Preprocess
    source: str  # where it came from, in words
    assumed: bool  # True when nothing about the weights stated it


def from_mapping(d: dict) -> Preprocess:
    """Our metadata / manifest form (resize, crop, interpolation, mean, std)."""
    return Preprocess(
        crop=int(d["crop"]),
        resize=int(d["resize"]),
        interpolation=str(d["interpolation"]),
        mean=tuple(float(x) for x in d["mean"]),
        std=tuple(float(x) for x in d["std"]),
    )


def from_pretrained_cfg(cfg: dict, fallback: Preprocess, where: str) -> Preprocess:
    """timm's pretrained_cfg (mean, std, interpolation, crop_pct, input_size) -> Preprocess;
    missing keys keep `fallback`'s values. Bad values are the file's fault: WeightsError."""
    try:
        crop = int(cfg["input_size"][-1]) if cfg.get("input_size") else fallback.crop
        crop_pct = float(cfg["crop_pct"]) if cfg.get("crop_pct") is not None else fallback.crop_pct
        interpolation = str(cfg.get("interpolation") or fallback.interpolation)
        mean = tuple(float(x) for x in cfg["mean"]) if cfg.get("mean") is not None else fallback.mean
        std = tuple(float(x) for x in cfg["std"]) if cfg.get("std") is not None else fallback.std
        override = ContractOverride(
            mean=mean,
            std=std,
            interpolation=interpolation if interpolation in INTERPOLATIONS else None,
            crop_pct=crop_pct,
        )
    except (UsageError, TypeError, ValueError, KeyError, IndexError) as exc:
        raise WeightsError(
            f"{where}: unusable preprocessing ({str(exc) or exc.__class__.__name__}); fix it or state the "
            "contract with --mean/--std/--interpolation/--crop-pct"
        ) from None
    if interpolation not in INTERPOLATIONS:
        raise WeightsError(
            f"{where}: interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}; "
            "pass --interpolation"
        )
    return override.apply(replace(fallback, crop=crop, resize=crop))


def read_config_json(checkpoint: Path, fallback: Preprocess) -> Contract | None:
    """The contract in `config.json` beside `checkpoint` (HF hub layout), if there is one."""
    path = Path(checkpoint).parent / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(
            f"{path}: not readable JSON ({exc.__class__.__name__}); fix or remove it"
        ) from None
    if not isinstance(doc, dict):
        return None
    cfg = doc.get("pretrained_cfg") if isinstance(doc.get("pretrained_cfg"), dict) else doc
    if not any(k in cfg for k in ("mean", "std", "interpolation", "crop_pct", "input_size")):
        return None
    return Contract(from_pretrained_cfg(cfg, fallback, str(path)), f"{path} (pretrained_cfg)", False)


def describe(pre: Preprocess) -> str:
    mean = ",".join(f"{v:g}" for v in pre.mean)
    std = ",".join(f"{v:g}" for v in pre.std)
    return f"mean {mean} std {std}, {pre.interpolation}, crop_pct {pre.crop_pct:.3g}"
