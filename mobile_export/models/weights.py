"""Where parameters come from: a published checkpoint, a local file, or a seeded init.

Our state-dict names are exactly timm's, so timm-format files (and our own) load by
identity. torchvision's MobileNetV2/V3 hold the same tensors in the same order under other
names, so they map by position, with the one shape change of the V3 head (torchvision's
Linear(960, 1280) is timm's 1x1 conv). Every mapping is checked name by name and shape by
shape before anything is copied; a misfit is reported as one line with the counts, the first
offending keys and the likely fix.

Pickles are read with `torch.load(weights_only=True)` only: a file that would run code is
refused, never executed."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from ..errors import DownloadError, UsageError, WeightsError
from ..fsutil import atomic_path, sha256_file
from . import contract as contract_mod
from .contract import Contract
from .registry import ModelSpec, Preprocess, WeightSource

OUR_FORMAT = "mobile-export.weights"
OUR_FORMAT_VERSION = "1"
OFFLINE_ENV = "MOBILE_EXPORT_OFFLINE"
DOWNLOAD_TIMEOUT_S = 60
WRAPPER_KEYS = (
    "state_dict",
    "model",
    "model_state_dict",
    "state_dict_ema",
    "model_ema",
)  # training checkpoints
STRIPPED_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile
POSITIONAL_GENERATIONS = ("v2", "v3")  # torchvision has these, with tensors in timm's order
SHOW = 3  # keys shown per kind in a one-line diff


# --- the --weights argument ------------------------------------------------------------


def parse_weights_arg(weights: str) -> tuple[str, str | None]:
    """ "imagenet" / "imagenet:TAG" -> ("imagenet", tag); "random" -> ("random", None);
    "example" -> ("example", None) (the trained file inside the package, models/example.py);
    anything else is a path -> ("file", path)."""
    text = weights.strip()
    head, _, tag = text.partition(":")
    if head.lower() == "imagenet" and not Path(text).exists():
        return "imagenet", (tag or None)
    if text.lower() == "random":
        return "random", None
    if text.lower() == "example" and not Path(text).exists():
        return "example", None
    return "file", text


def resolve_source(spec: ModelSpec, weights: str) -> tuple[WeightSource | None, dict]:
    """The checkpoint `weights` names, and what the architecture must change to fit it.

    For a file, also returns {"num_classes": N} read from its classifier, so a fine-tuned
    checkpoint builds the right head without --num-classes (create_model uses it only when
    the user gave none)."""
    kind, arg = parse_weights_arg(weights)
    if kind == "random":
        return None, {}
    if kind == "imagenet":
        source = _published(spec, arg)
        return source, dict(source.arch_overrides)
    path = _example_path(spec) if kind == "example" else Path(arg).expanduser()
    source, ckpt = _file_source(spec, path)
    overrides = dict(source.arch_overrides)
    classes = ckpt.num_classes(source.format)
    if classes is not None:
        overrides["num_classes"] = classes
    return source, overrides


def _example_path(spec: ModelSpec) -> Path:
    from .example import EXAMPLE

    if spec.name != EXAMPLE.model:
        raise UsageError(
            f"--weights example is a {EXAMPLE.model} trained on {EXAMPLE.classes} photo labels and fits only that "
            f"variant, not {spec.name}; run `mobile-export {EXAMPLE.model} --weights example`, "
            "or use --weights random / imagenet / FILE"
        )
    path = EXAMPLE.path()
    if not path.is_file():
        raise WeightsError(f"the packaged example weights {path} are missing; reinstall mobile-export")
    return path


def stored_labels(source: WeightSource | None) -> list[str] | None:
    """Labels our own safetensors files carry (metadata "labels", a JSON list), else None."""
    if source is None or source.format != "mobile-export":
        return None
    text = read_checkpoint(source.url).metadata.get("labels")
    if not text:
        return None
    try:
        labels = json.loads(text)
    except json.JSONDecodeError:
        raise WeightsError(
            f"{Path(source.url).name}: its 'labels' metadata is not a JSON list; re-save it or pass --labels"
        ) from None
    return [str(x) for x in labels] if isinstance(labels, list) and labels else None


def _published(spec: ModelSpec, tag: str | None) -> WeightSource:
    if not spec.weights:
        raise UsageError(
            f"{spec.name} has no published checkpoint; use --weights random (with --seed) or --weights /path/to/file.pth"
        )
    source = spec.weight_source(tag)
    if source is None:
        tags = ", ".join(f"imagenet:{s.tag}" for s in spec.weights)
        raise UsageError(f"{spec.name} has no checkpoint tagged {tag!r}; choose one of: {tags}")
    return source


# --- reading files ---------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A state dict read from disk, with the safetensors metadata (empty for pickles)."""

    path: Path
    state: dict  # name -> torch.Tensor
    metadata: dict = field(default_factory=dict)
    sha256: str = ""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.state.items()}

    def detect_format(self) -> str:
        return detect_format(self.state.keys(), self.metadata, self.path)

    def num_classes(self, fmt: str) -> int | None:
        return classifier_classes(self.shapes(), fmt)


_CACHE: dict[tuple, Checkpoint] = {}  # one entry: resolve_source reads, load_into reuses


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a .pth/.pt (weights_only) or .safetensors state dict; unwrap training
    checkpoints ({"state_dict": ...}, {"model": ...}) and DataParallel/compile prefixes."""
    p = Path(path)
    if not p.is_file():
        hint = "" if p.suffix else "; or --weights imagenet / random"
        raise WeightsError(
            f"weights file {str(p)!r} does not exist; pass an existing .pth/.pt/.safetensors file{hint}"
        )
    stat = p.stat()
    key = (str(p.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _CACHE:
        return _CACHE[key]
    if stat.st_size == 0:
        raise WeightsError(f"weights file {str(p)!r} is empty; download or save it again")
    with open(p, "rb") as fh:
        head = fh.read(9)
    # safetensors first: its header starts with an 8-byte length whose first byte may be 0x80,
    # which the pickle test below would take for a legacy pickle (and lose the metadata)
    if head[8:9] == b"{" or p.suffix == ".safetensors":
        state, metadata = _read_safetensors(p)
    elif head[:2] == b"PK" or head[:1] == b"\x80":  # zip (torch.save) or a legacy pickle
        state, metadata = _read_torch(p), {}
    else:
        raise WeightsError(
            f"{p.name} is neither a PyTorch checkpoint (.pth/.pt) nor a .safetensors file; pass a state dict saved by torch.save or safetensors"
        )
    ckpt = Checkpoint(p, _strip_prefixes(state), metadata, sha256_file(p))
    _CACHE.clear()
    _CACHE[key] = ckpt
    return ckpt


def _read_torch(p: Path) -> dict:
    import pickle

    import torch

    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise WeightsError(
            f"refusing to load {p.name}: it holds Python objects besides tensors and unpickling them could run code; "
            "in a trusted environment re-save only its state_dict (torch.save(model.state_dict(), ...)) or use .safetensors"
        ) from None
    except Exception as exc:  # truncated zip, bad pickle stream, ...
        raise WeightsError(
            f"cannot read {p.name} ({_reason(exc)}); the file is damaged or truncated, download or save it again"
        ) from None
    return _unwrap(obj, p)


def _read_safetensors(p: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers and short files
        raise WeightsError(
            f"cannot read {p.name} as safetensors ({_reason(exc)}); the file is damaged or truncated, download or save it again"
        ) from None
    return state, metadata


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:120]}" if text else exc.__class__.__name__


def _unwrap(obj, p: Path) -> dict:
    import torch

    for _ in range(2):  # {"model": {"state_dict": ...}} occurs too
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    what = (
        f"a dict with keys {', '.join(map(str, list(obj)[:5]))}"
        if isinstance(obj, Mapping)
        else type(obj).__name__
    )
    raise WeightsError(
        f"{p.name} holds {what}, not a state dict of tensors; save model.state_dict() (or a dict with 'state_dict'/'model')"
    )


def _strip_prefixes(state: dict) -> dict:
    for prefix in STRIPPED_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


# --- formats ---------------------------------------------------------------------------


def detect_format(keys, metadata: Mapping[str, str] | None = None, path: Path | None = None) -> str:
    """ "mobile-export" (our safetensors metadata), "torchvision" (features.*) or "timm"."""
    if (metadata or {}).get("format") == OUR_FORMAT:
        return "mobile-export"
    keys = list(keys)
    if any(k.startswith("features.") for k in keys):
        return "torchvision"
    if any(k.startswith(("conv_stem.", "blocks.")) for k in keys):
        return "timm"
    name = path.name if path else "the checkpoint"
    shown = ", ".join(keys[:3]) or "no tensors"
    raise WeightsError(
        f"cannot tell the format of {name} (keys: {shown}); expected a torchvision (features.*) or timm (conv_stem.*, blocks.*) MobileNet state dict"
    )


def classifier_classes(shapes: Mapping[str, tuple], fmt: str) -> int | None:
    """Rows of the last classifier matrix: timm/ours `classifier.weight`; torchvision's
    last Linear under `classifier.` (classifier.1 on V2, classifier.3 on V3)."""
    if fmt in ("timm", "mobile-export"):
        shape = shapes.get("classifier.weight")
        return int(shape[0]) if shape and len(shape) == 2 else None
    linear = [
        s for k, s in shapes.items() if k.startswith("classifier.") and k.endswith(".weight") and len(s) == 2
    ]
    return int(linear[-1][0]) if linear else None


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _fits(src: tuple, dst: tuple) -> bool:
    """Same shape, or a Linear matrix against a 1x1 conv kernel with the same rows/cols."""
    if tuple(src) == tuple(dst):
        return True
    a, b = (tuple(src), tuple(dst)) if len(src) <= len(dst) else (tuple(dst), tuple(src))
    return len(a) == 2 and len(b) == 4 and b[2:] == (1, 1) and a == b[:2]


def _fmt_shape(shape) -> str:
    return "(" + ",".join(str(int(d)) for d in shape) + ")"


def _params(shapes: Mapping[str, tuple]) -> int:
    total = 0
    for key, shape in shapes.items():
        if key.endswith(("running_mean", "running_var")) or _is_counter(key):
            continue
        n = 1
        for d in shape:
            n *= int(d)
        total += n
    return total


@dataclass
class KeyPlan:
    """How checkpoint tensors land in the model: `mapping` checkpoint key -> model key, plus
    what did not fit. Built from names and shapes only, so fixtures can check it."""

    fmt: str
    mapping: dict[str, str]
    missing: list[str]  # model keys nothing maps to
    unexpected: list[str]  # checkpoint keys that map to nothing
    mismatched: list[tuple[str, str]]  # (checkpoint key, model key) with different shapes
    ckpt_shapes: Mapping[str, tuple]
    model_shapes: Mapping[str, tuple]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def only_classifier_differs(self) -> bool:
        return (
            bool(self.mismatched)
            and not (self.missing or self.unexpected)
            and all(m.startswith("classifier.") for _, m in self.mismatched)
        )

    def describe(self, model_name: str, num_classes: int) -> str:
        """One line: what does not fit and the likely fix."""
        ck, md = self.ckpt_shapes, self.model_shapes
        parts = []
        if self.missing:
            parts.append(
                f"{len(self.missing)} missing ("
                + ", ".join(f"{k} {_fmt_shape(md[k])}" for k in self.missing[:SHOW])
                + ")"
            )
        if self.unexpected:
            parts.append(
                f"{len(self.unexpected)} unexpected ("
                + ", ".join(f"{k} {_fmt_shape(ck[k])}" for k in self.unexpected[:SHOW])
                + ")"
            )
        if self.mismatched:
            parts.append(
                f"{len(self.mismatched)} mismatched ("
                + ", ".join(
                    f"{c} {_fmt_shape(ck[c])} vs {m} {_fmt_shape(md[m])}"
                    if c != m
                    else f"{c} file {_fmt_shape(ck[c])} vs model {_fmt_shape(md[m])}"
                    for c, m in self.mismatched[:SHOW]
                )
                + ")"
            )
        classes = classifier_classes(ck, self.fmt)
        if self.only_classifier_differs() and classes is not None:
            fix = f"its classifier has {classes} classes, not {num_classes}: pass --num-classes {classes} (or a labels file with {classes} lines)"
        else:
            fix = (
                f"the file has {_params(ck):,} parameters, {model_name} has {_params(md):,}: "
                "is it a checkpoint for another variant or width? (see `mobile-export list`)"
            )
        n_ck = sum(not _is_counter(k) for k in ck)
        n_md = sum(not _is_counter(k) for k in md)
        return (
            f"weights do not fit {model_name} ({self.fmt} format, {n_ck} tensors for {n_md}): "
            + "; ".join(parts)
            + f"; {fix}"
        )


def plan_mapping(ckpt_shapes: Mapping[str, tuple], model_shapes: Mapping[str, tuple], fmt: str) -> KeyPlan:
    """Match checkpoint keys to model keys: by name for timm and our format, by position
    for torchvision. BN `num_batches_tracked` counters are optional on either side (they do
    not affect inference and some exports drop them)."""
    if fmt == "torchvision":
        return _plan_by_position(ckpt_shapes, model_shapes)
    return _plan_by_name(ckpt_shapes, model_shapes, fmt)


def _plan_by_name(ck: Mapping[str, tuple], md: Mapping[str, tuple], fmt: str) -> KeyPlan:
    mapping, mismatched = {}, []
    for key, shape in md.items():  # model order: the first mismatch shown is the earliest layer
        if key in ck:
            if _fits(ck[key], shape):
                mapping[key] = key
            else:
                mismatched.append((key, key))
    missing = [k for k in md if k not in ck and not _is_counter(k)]
    unexpected = [k for k in ck if k not in md and not _is_counter(k)]
    return KeyPlan(fmt, mapping, missing, unexpected, mismatched, ck, md)


_TV_TOP = {"features": 0, "classifier": 1}
_PARAM_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3, "num_batches_tracked": 4}


def torchvision_order(key: str) -> tuple:
    """Sort key giving torchvision's module order (features before classifier, indices
    numerically, weight/bias/statistics as registered). safetensors stores keys sorted as
    text ("features.10" before "features.2"), so positions are rebuilt, never trusted."""
    parts = key.split(".")
    path = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts[1:-1])
    return (_TV_TOP.get(parts[0], 2), parts[0], path, _PARAM_ORDER.get(parts[-1], 5), parts[-1])


def _plan_by_position(ck: Mapping[str, tuple], md: Mapping[str, tuple]) -> KeyPlan:
    ck = {k: ck[k] for k in sorted(ck, key=torchvision_order)}
    ck_keys = [k for k in ck if not _is_counter(k)]
    md_keys = [k for k in md if not _is_counter(k)]
    mapping, mismatched = {}, []
    for c, m in zip(ck_keys, md_keys):
        if _fits(ck[c], md[m]):
            mapping[c] = m
        else:
            mismatched.append((c, m))
    if mismatched and len(ck_keys) != len(md_keys):
        # Out of step: report the first divergence, not every later pair.
        mismatched = mismatched[:1]
    missing = md_keys[len(ck_keys) :]
    unexpected = ck_keys[len(md_keys) :]
    # Counters follow their BN: X.running_mean -> Y.running_mean gives X.num_batches_tracked -> Y.
    for c, m in list(mapping.items()):
        if c.endswith(".running_mean"):
            c_n, m_n = (
                c[: -len("running_mean")] + "num_batches_tracked",
                m[: -len("running_mean")] + "num_batches_tracked",
            )
            if c_n in ck and m_n in md:
                mapping[c_n] = m_n
    return KeyPlan("torchvision", mapping, missing, unexpected, mismatched, ck, md)


# --- loading ---------------------------------------------------------------------------


RANDOM_INITS = ("input-dependent", "plain")  # plain: PyTorch's default init (manifests before 2)


def load_into(
    module,
    spec: ModelSpec,
    weights: str,
    source: WeightSource | None,
    num_classes: int,
    seed: int = 0,
    random_init: str = "input-dependent",
) -> dict:
    """Fill `module` (built with its random init already seeded) from `source`; returns the
    manifest's weights record. A published checkpoint whose classifier does not match
    `num_classes` loads everything but the classifier (which stays seeded-random, as timm
    does for fine-tuning); a local file must fit exactly. Random weights are woken
    (models/synthetic.py) unless `random_init` is "plain", which old manifests recorded."""
    if source is None:
        if random_init not in RANDOM_INITS:
            raise UsageError(f"unknown random init {random_init!r}; choose one of: {', '.join(RANDOM_INITS)}")
        record = {
            "source": "random",
            "detail": f"seeded random init (seed {seed})",
            "seed": seed,
            "format": None,
        }
        if random_init == "input-dependent":
            from .synthetic import RECIPE, wake

            wake(module, seed, spec.preprocess.mean, spec.preprocess.std)
            record.update(detail=f"seeded random init (seed {seed}), {RECIPE}", init=random_init)
        return {**record, "sha256": state_digest(module)}
    kind, _ = parse_weights_arg(weights)
    if kind == "imagenet":
        path, digest = fetch(source)
        ckpt = read_checkpoint(path)
        fmt = source.format
    else:
        ckpt = read_checkpoint(source.url)
        fmt = source.format
        digest = ckpt.sha256
    if fmt == "mobile-export":
        _check_our_metadata(ckpt, spec)
    model_state = module.state_dict()
    model_shapes = {k: tuple(v.shape) for k, v in model_state.items()}
    if fmt == "torchvision" and spec.generation not in POSITIONAL_GENERATIONS:
        raise WeightsError(
            f"{ckpt.path.name} is a torchvision checkpoint, but torchvision has no {spec.family}; pass a timm-format or mobile-export file for {spec.name}"
        )
    plan = plan_mapping(ckpt.shapes(), model_shapes, fmt)
    head_note = None
    if not plan.ok:
        if kind == "imagenet" and plan.only_classifier_differs():
            head_note = f"classifier reset to {num_classes} classes (seeded random, seed {seed})"
        else:
            raise WeightsError(plan.describe(spec.name, num_classes))
    _copy(module, model_state, ckpt.state, plan)
    _CACHE.clear()  # the tensors now live in the module; do not keep a second copy
    info = {
        "source": kind if kind in ("imagenet", "example") else "file",
        "detail": (
            f"imagenet:{source.tag} ({source.format}) {source.url}" if kind == "imagenet" else str(ckpt.path)
        ),
        "format": fmt,
        "sha256": digest,
    }
    if kind == "imagenet":
        info.update(tag=source.tag, url=source.url, license=source.license)
    elif kind == "example":
        from .example import EXAMPLE

        info["detail"] = (
            f"packaged example ({EXAMPLE.model}, {EXAMPLE.classes} classes): trained on {EXAMPLE.trained_on}"
        )
    else:
        info["path"] = str(ckpt.path.resolve())
    if source.arch_overrides:
        info["arch_overrides"] = dict(source.arch_overrides)
    if head_note:
        info["classifier"] = head_note
    return info


def _copy(module, model_state: dict, ckpt_state: dict, plan: KeyPlan) -> None:
    import torch

    with torch.no_grad():
        for c_key, m_key in plan.mapping.items():
            target = model_state[m_key]
            target.copy_(ckpt_state[c_key].reshape(target.shape).to(target.dtype))


def state_digest(module) -> str:
    """sha256 over names and bytes of the state dict: equal digests, equal tensors."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode() + b"\0")
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# --- local files: which source they are ------------------------------------------------


def _file_source(spec: ModelSpec, path: Path) -> tuple[WeightSource, Checkpoint]:
    """A WeightSource describing a local file: its format, hash, architecture overrides and
    preprocessing. Preprocessing comes from our metadata, else from the published checkpoint
    the file is (same hash) or derives from (same format), else the variant's default."""
    ckpt = read_checkpoint(path)
    fmt = ckpt.detect_format()
    overrides: dict = {}
    if fmt == "mobile-export":
        _check_our_metadata(ckpt, spec)
        overrides = json.loads(ckpt.metadata.get("arch_overrides", "{}"))
    preprocess = file_contract(spec, ckpt, fmt).preprocess
    if fmt == "torchvision" and spec.generation == "v3":
        overrides = {"bn_eps": 1e-3}  # torchvision's V3 BatchNorm; timm and ours use 1e-5
    source = WeightSource(
        "file",
        fmt,
        str(path),
        ckpt.sha256,
        preprocess,
        None,
        license="unknown",
        arch_overrides=overrides,
        note="local file",
    )
    return source, ckpt


def _train_small_contract(ckpt: Checkpoint) -> Contract | None:
    """scripts/train_small.py's checkpoints (the trained fixtures, `--weights example`) state the
    contract they were trained with in their 'mobile_export' metadata: mean/std at the training
    resolution, no crop margin, bilinear."""
    try:
        meta = json.loads(ckpt.metadata["mobile_export"])
        res = int(meta["resolution"])
        mean, std = tuple(meta["preprocess"]["mean"]), tuple(meta["preprocess"]["std"])
    except (KeyError, ValueError, TypeError):
        return None
    pre = Preprocess(crop=res, resize=res, interpolation="bilinear", mean=mean, std=std)
    return Contract(pre, f"{ckpt.path.name} metadata (scripts/train_small.py)", False)


def file_contract(spec: ModelSpec, ckpt: Checkpoint, fmt: str) -> Contract:
    """The preprocessing a file checkpoint was trained with, and where that came from
    (the order is in models/contract.py)."""
    if fmt == "mobile-export" and "preprocess" in ckpt.metadata:
        try:
            pre = contract_mod.from_mapping(json.loads(ckpt.metadata["preprocess"]))
        except (ValueError, KeyError, TypeError):
            raise WeightsError(
                f"{ckpt.path.name}: its 'preprocess' metadata is unreadable; re-save it with this mobile-export"
            ) from None
        return Contract(pre, f"{ckpt.path.name} metadata (mobile-export 'preprocess')", False)
    trained = _train_small_contract(ckpt)
    if trained is not None:
        return trained
    published = next((s for s in spec.weights if s.sha256 and ckpt.sha256.startswith(s.sha256)), None)
    same_format = [s for s in spec.weights if s.format == fmt]
    fallback = published or (same_format[0] if same_format else None)
    base = fallback.preprocess if fallback else spec.preprocess
    stated = contract_mod.read_config_json(ckpt.path, base)
    if stated is not None:
        return stated
    if published is not None:
        return Contract(
            published.preprocess, f"the published checkpoint imagenet:{published.tag} (same sha256)", False
        )
    if fallback is not None:
        return Contract(
            base,
            f"the published {fmt} checkpoint imagenet:{fallback.tag} of {spec.name} (the file states none)",
            True,
        )
    return Contract(base, f"{spec.name}'s default (the file states none)", True)


def contract_for(spec: ModelSpec, weights: str, source: WeightSource | None) -> Contract:
    """The contract of the weights `resolve_source` found (before any command-line override)."""
    if source is None:
        return Contract(
            spec.preprocess, f"{spec.name}'s default (random weights have no contract of their own)", False
        )
    kind, _ = parse_weights_arg(weights)
    if kind == "imagenet":
        return Contract(source.preprocess, f"the published checkpoint imagenet:{source.tag}", False)
    ckpt = read_checkpoint(source.url)
    contract = file_contract(spec, ckpt, source.format)
    if kind == "example":
        return replace(contract, source="the packaged example's metadata")
    return contract


def _check_our_metadata(ckpt: Checkpoint, spec: ModelSpec) -> None:
    meta = ckpt.metadata
    if meta.get("version") != OUR_FORMAT_VERSION:
        raise WeightsError(
            f"{ckpt.path.name} is mobile-export weights version {meta.get('version')!r}; this version reads {OUR_FORMAT_VERSION!r}: re-save it with this mobile-export"
        )
    if meta.get("model") != spec.name:
        raise WeightsError(
            f"{ckpt.path.name} holds weights for {meta.get('model')}, not {spec.name}; pass that model name instead"
        )


def save_weights(built, dest: str | Path, force: bool = True) -> Path:
    """Write `built` (a models.BuiltModel) in our format: safetensors (no code, no pickle)
    whose metadata names the model, its head, its architecture overrides and its input
    contract, so the file alone rebuilds the same network with the same preprocessing."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in built.module.state_dict().items()}
    metadata = {
        "format": OUR_FORMAT,
        "version": OUR_FORMAT_VERSION,
        "model": built.spec.name,
        "num_classes": str(built.num_classes),
        "arch_overrides": json.dumps(dict(built.weights.get("arch_overrides", {}))),
        "preprocess": json.dumps(built.preprocess.to_dict()),
        "origin": json.dumps({k: built.weights.get(k) for k in ("source", "detail", "sha256")}),
    }
    with atomic_path(dest, force=force) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(dest)


# --- published checkpoints: download -------------------------------------------------


def is_offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    """torch.hub's checkpoint folder ($TORCH_HOME/hub/checkpoints), shared with torchvision."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def fetch(source: WeightSource) -> tuple[Path, str]:
    """Path and sha256 of `source` in the hub cache, downloading it if needed.

    torchvision file names end in a sha256 prefix, which is checked (as torch.hub does).
    Hugging Face hub files (timm) come with no hash we could know in advance: the first
    download records its sha256 beside it (`<file>.sha256`) and every later use must match
    that pin (trust on first use). The download goes to a temporary file that is renamed only
    once complete and verified, so a failure never leaves a file in the cache."""
    dest = cache_dir() / source.filename
    pin = dest.with_name(dest.name + ".sha256")
    expected = source.sha256 or (pin.read_text().strip() if pin.is_file() else None)
    if dest.is_file():
        digest = sha256_file(dest)
        if expected is None:  # placed there by another tool: pin what we found
            _write_pin(pin, digest)
            return dest, digest
        if digest.startswith(expected):
            return dest, digest
        stale = f"cached {dest} has sha256 {digest[:12]}, expected {expected[:12]}"
    else:
        stale = None
    fix = f"download {source.url} elsewhere and pass --weights /path/to/{source.filename}"
    if is_offline():
        why = stale or f"{source.filename} is not in {dest.parent}"
        raise DownloadError(f"offline ({OFFLINE_ENV}=1) and {why}; {fix}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"cannot create the torch hub cache {dest.parent} ({exc.strerror}); set TORCH_HOME to a writable folder, or {fix}"
        ) from None
    if not os.access(dest.parent, os.W_OK | os.X_OK):
        raise DownloadError(
            f"the torch hub cache {dest.parent} is not writable; set TORCH_HOME to a writable folder, or {fix}"
        )
    digest = _download(source.url, dest, expected, source.filename)
    if source.sha256 is None:
        _write_pin(pin, digest)
    return dest, digest


def _download(url: str, dest: Path, expected: str | None, filename: str) -> str:
    import http.client
    import urllib.error
    import urllib.request

    fix = f"fetch that URL elsewhere and pass --weights /path/to/{filename}"
    digest = hashlib.sha256()
    try:
        with atomic_path(dest, force=True) as tmp:
            request = urllib.request.Request(url, headers={"User-Agent": "mobile-export"})
            with (
                urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response,
                open(tmp, "wb") as out,
            ):
                length = response.headers.get("Content-Length")
                received = 0
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
                    received += len(block)
            if length is not None and received != int(length):
                raise DownloadError(
                    f"download of {url} stopped after {received} of {length} bytes; retry, or {fix}"
                )
            if expected and not digest.hexdigest().startswith(expected):
                raise DownloadError(
                    f"{filename} from {url} has sha256 {digest.hexdigest()[:12]}, expected {expected[:12]}; nothing was kept: retry, or {fix}"
                )
            if not expected and not _looks_like_checkpoint(tmp):  # never pin an error page
                raise DownloadError(
                    f"{url} did not return a checkpoint (not safetensors or a torch zip); nothing was kept: {fix}"
                )
    except DownloadError:
        raise
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"cannot download {url} (HTTP {exc.code} {exc.reason}); {fix}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(f"cannot download {url} ({_reason_text(exc.reason)}); {fix}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DownloadError(f"cannot download {url} ({_reason(exc)}); {fix}") from None
    return digest.hexdigest()


def _looks_like_checkpoint(path: Path) -> bool:
    """Cheap header check: a torch.save zip, or safetensors' length-prefixed JSON header."""
    with open(path, "rb") as fh:
        head = fh.read(8 + 2)
    if head[:2] == b"PK":
        return True
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_len < path.stat().st_size


def _reason_text(reason) -> str:
    return reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason).splitlines()[0]


def _write_pin(pin: Path, digest: str) -> None:
    with atomic_path(pin, force=True) as tmp:
        tmp.write_text(digest + "\n")
