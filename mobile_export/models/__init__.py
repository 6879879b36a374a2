"""Build any member of the family by name: `create_model("v2", weights="imagenet")`.

The facts live in `registry`; the architectures in one module per generation; the
checkpoint handling in `weights`. Torch is imported only when a model is built."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from .contract import ContractOverride
from .registry import ModelSpec, Preprocess, all_specs, get_spec

__all__ = [
    "BuiltModel",
    "ContractOverride",
    "ModelSpec",
    "Preprocess",
    "all_specs",
    "get_spec",
    "create_model",
    "build_architecture",
    "read_labels",
    "imagenet_labels",
]


@dataclass
class BuiltModel:
    """A model ready to export, with everything the manifest needs to describe it."""

    module: object  # torch.nn.Module in eval mode
    spec: ModelSpec
    preprocess: Preprocess  # the contract of the loaded weights at the chosen resolution
    num_classes: int
    resolution: int
    weights: dict = field(default_factory=dict)  # {"source", "detail", "sha256"}
    labels: list[str] | None = None
    contract_source: str = ""  # where `preprocess` came from, in words (models/contract.py)
    contract_assumed: bool = False  # True when nothing about the weights stated it

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.resolution, self.resolution)


def build_architecture(spec: ModelSpec, num_classes: int | None = None, **overrides):
    """Instantiate the architecture of `spec` with fresh (random) parameters."""
    module_name, fn_name = spec.builder.split(":")
    builder = getattr(importlib.import_module(module_name), fn_name)
    kwargs = {**spec.build_kwargs, **overrides}
    return builder(num_classes=spec.num_classes if num_classes is None else num_classes, **kwargs)


def read_labels(path: str | Path) -> list[str]:
    from ..errors import MobileExportError

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MobileExportError(
            f"labels file {str(p)!r} does not exist; pass a text file with one label per line"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MobileExportError(
            f"cannot read labels file {str(p)!r} ({exc.__class__.__name__}); pass a UTF-8 text file with one label per line"
        ) from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise MobileExportError(f"labels file {str(p)!r} is empty; put one label per line")
    return labels


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in the order torchvision and timm checkpoints use."""
    from importlib import resources

    text = resources.files("mobile_export").joinpath("data/imagenet_labels.txt").read_text(encoding="utf-8")
    return text.splitlines()


def create_model(
    name: str | ModelSpec,
    *,
    weights: str | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    labels: list[str] | None = None,
    resolution: int | None = None,
    random_init: str = "input-dependent",
    contract: ContractOverride | None = None,
) -> BuiltModel:
    """Build, load weights, switch to eval. `weights`: "imagenet[:tag]", "random" or a path.
    `random_init`: "plain" rebuilds the faded random weights of manifests before version 2.
    `contract`: preprocessing stated by the user, over what the checkpoint states or implies."""
    import torch

    from . import weights as weights_mod

    spec = name if isinstance(name, ModelSpec) else get_spec(name)
    if spec.output == "features" and (labels is not None or num_classes is not None):
        raise UsageError(f"{spec.name} is a feature encoder (no classifier); drop --num-classes and --labels")
    if labels is not None:
        if num_classes is None:
            num_classes = len(labels)
        elif num_classes != len(labels):
            raise UsageError(
                f"--num-classes {num_classes} but the labels file has {len(labels)} labels; make them agree"
            )
    n_classes = spec.num_classes if num_classes is None else int(num_classes)
    if n_classes < 1 and spec.output == "logits":
        raise UsageError(f"--num-classes must be at least 1, got {n_classes}")
    if resolution is not None and not (32 <= resolution <= 4096):
        raise UsageError(f"--resolution must be between 32 and 4096, got {resolution}")
    weights = weights or spec.default_weights()

    source, overrides = weights_mod.resolve_source(spec, weights)
    file_classes = overrides.pop("num_classes", None)  # a fine-tuned file's own head size
    if num_classes is None and file_classes is not None:
        n_classes = file_classes
    if labels is None:
        labels = weights_mod.stored_labels(source)  # our own files carry their labels
    stated = weights_mod.contract_for(spec, weights, source)
    torch.manual_seed(seed)
    module = build_architecture(spec, n_classes, **overrides)
    info = weights_mod.load_into(module, spec, weights, source, n_classes, seed=seed, random_init=random_init)
    module.eval()

    preprocess, contract_source, assumed = stated.preprocess, stated.source, stated.assumed
    if contract is not None and contract.given():
        given = contract.given()
        preprocess = contract.apply(preprocess)
        contract_source = f"command line ({' '.join(given)})" + (
            f" over {stated.source}" if len(given) < 4 else ""
        )
        assumed = assumed and len(given) < 4
    res = resolution or preprocess.crop
    if labels is None and source is not None and n_classes == 1000 and spec.output == "logits":
        labels = imagenet_labels()  # a published ImageNet checkpoint: its class names ship with us
    return BuiltModel(
        module=module,
        spec=spec,
        preprocess=preprocess.at_resolution(res),
        num_classes=n_classes,
        resolution=res,
        weights=info,
        labels=labels,
        contract_source=contract_source,
        contract_assumed=assumed,
    )


def create_from_manifest(model: dict, weights: str, seed: int = 0) -> BuiltModel:
    """Rebuild the architecture a manifest's `model` record describes (verify, bench).
    An encoder records num_classes 0 and takes no class count. Random weights recorded
    without an `init` are the plain ones of manifests before version 2."""
    encoder = model.get("output") == "features"
    record = model.get("weights") or {}
    random_init = record.get("init", "plain") if record.get("source") == "random" else "input-dependent"
    return create_model(
        model["name"],
        weights=weights,
        seed=seed,
        num_classes=None if encoder else int(model["num_classes"]),
        resolution=int(model["resolution"]),
        random_init=random_init,
    )
