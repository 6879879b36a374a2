#!/usr/bin/env python3
"""Evidence from the real torchvision / timm, for tests that must not depend on them.

Runs ONLY in a side environment that has torchvision and timm (never a project
dependency; PyPI's torchvision does not import beside the project's torch 2.13 CPU):

    /work/sidevenv/bin/python scripts/reference_fixtures.py fixtures
        writes tests/fixtures/reference/{timm,torchvision}/<model>.json: the state-dict
        names and shapes, in order, of every reference model that has a counterpart in the
        family. Small, committed; tests/test_weights.py checks our key mapping against them.

    side-python scripts/reference_fixtures.py outputs --input IN.safetensors --out DIR CASE...
        CASE = library:model:format[:num_classes] (format pth | safetensors). Builds the real
        model with a seeded random init (BN statistics and layer scales made non-trivial so a
        wrong mapping or eps shows), saves its state dict as DIR/<model>.<format> and its
        output on IN's "input" tensor as DIR/<model>.out.safetensors. Used by
        tests/test_reference_outputs.py.

Models are built on the meta device for `fixtures` (names and shapes need no memory)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "reference"

# Reference models with a counterpart in the family. timm names that timm does not register
# (V1 below 1.0, the minimalistic V3 without the tf_ padding/eps) are built with the same
# generator timm uses for its registered siblings.
TIMM_MODELS = (
    "mobilenetv1_100",
    "mobilenetv1_075",
    "mobilenetv1_050",
    "mobilenetv1_025",
    "mobilenetv2_140",
    "mobilenetv2_100",
    "mobilenetv2_075",
    "mobilenetv2_050",
    "mobilenetv2_035",
    "mobilenetv3_large_100",
    "mobilenetv3_large_075",
    "mobilenetv3_small_100",
    "mobilenetv3_small_075",
    "mobilenetv3_large_minimal_100",
    "mobilenetv3_small_minimal_100",
    "mobilenetv4_conv_small",
    "mobilenetv4_conv_medium",
    "mobilenetv4_conv_large",
    "mobilenetv4_hybrid_medium",
    "mobilenetv4_hybrid_large",
    "mobilenetv5_300m_enc",
    "mobilenetv5_base",
)
TORCHVISION_MODELS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
_UNREGISTERED_TIMM = {  # name -> (generator, channel multiplier)
    "mobilenetv1_075": ("v1", 0.75),
    "mobilenetv1_050": ("v1", 0.5),
    "mobilenetv1_025": ("v1", 0.25),
    "mobilenetv3_large_minimal_100": ("v3", 1.0),
    "mobilenetv3_small_minimal_100": ("v3", 1.0),
}


def build(library: str, name: str, num_classes: int | None = None):
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if library == "torchvision":
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kwargs)
    if library != "timm":
        raise SystemExit(f"unknown library {library!r}; use timm or torchvision")
    import timm

    if name in _UNREGISTERED_TIMM:
        gen, width = _UNREGISTERED_TIMM[name]
        if gen == "v1":
            from timm.models.efficientnet import _gen_mobilenet_v1 as generator
        else:
            from timm.models.mobilenetv3 import _gen_mobilenet_v3 as generator
        return generator(name, width, **kwargs)
    return timm.create_model(name, pretrained=False, **kwargs)


def write_fixtures(out: Path) -> None:
    import timm
    import torch
    import torchvision

    versions = {"torch": torch.__version__, "timm": timm.__version__, "torchvision": torchvision.__version__}
    for library, names in (("timm", TIMM_MODELS), ("torchvision", TORCHVISION_MODELS)):
        folder = out / library
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            with torch.device("meta"):
                model = build(library, name)
            state = model.state_dict()
            params = sum(p.numel() for p in model.parameters())
            rows = ",\n".join(json.dumps([k, list(v.shape)]) for k, v in state.items())
            header = {
                "library": library,
                "model": name,
                "version": versions[library],
                "torch": versions["torch"],
                "num_classes": getattr(model, "num_classes", None) or _tv_classes(model),
                "params": params,
                "tensors": len(state),
            }
            text = json.dumps(header, indent=1)[:-2] + ',\n "state_dict": [\n' + rows + "\n ]\n}\n"
            json.loads(text)  # the file must stay valid JSON
            (folder / f"{name}.json").write_text(text)
            print(f"{library}/{name}: {len(state)} tensors, {params:,} params", file=sys.stderr)


def _tv_classes(model) -> int | None:
    last = model.classifier[-1] if hasattr(model, "classifier") else None
    return getattr(last, "out_features", None)


def randomize(model, calibration, seed: int) -> None:
    """A seeded init whose every tensor matters: BN affine and statistics away from 1/0
    (statistics from a train-mode pass, so activations stay O(1)), layer scales near 0.3,
    classifiers scaled so logits are O(1) and a 1e-5 tolerance means something."""
    import torch

    torch.manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration pass
        for name, p in model.named_parameters():
            if name.endswith("gamma"):  # timm LayerScale2d
                p.uniform_(0.1, 0.5)
        for m in model.modules():  # torchvision's N(0, 0.01) heads would make logits ~0.03
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0.0, m.in_features**-0.5)
                m.bias.normal_(0.0, 0.1)
        model.train()
        model(calibration)
        model.eval()
        for bn in bns:
            bn.momentum = 0.1


def write_outputs(input_path: Path, out: Path, cases: list[str], seed: int) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    x = load_file(str(input_path))["input"]
    out.mkdir(parents=True, exist_ok=True)
    for case in cases:
        library, name, fmt, *rest = case.split(":")
        num_classes = int(rest[0]) if rest else None
        model = build(library, name, num_classes)
        gen = torch.Generator().manual_seed(seed)
        calibration = torch.cat([x, torch.randn((3, *x.shape[1:]), generator=gen)])
        randomize(model, calibration, seed)
        with torch.no_grad():
            y = model(x)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if fmt == "safetensors":
            save_file(state, str(out / f"{name}.safetensors"))
        else:
            torch.save(state, out / f"{name}.{fmt}")
        save_file({"output": y.contiguous()}, str(out / f"{name}.out.safetensors"))
        print(f"{case}: output {tuple(y.shape)} |y|max {y.abs().max().item():.3f}", file=sys.stderr)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fx = sub.add_parser("fixtures", help="write the committed key/shape fixtures")
    fx.add_argument("--out", type=Path, default=FIXTURES)
    op = sub.add_parser("outputs", help="state dicts and outputs of seeded reference models")
    op.add_argument("--input", type=Path, required=True)
    op.add_argument("--out", type=Path, required=True)
    op.add_argument("--seed", type=int, default=0)
    op.add_argument("cases", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "fixtures":
        write_fixtures(args.out)
    else:
        write_outputs(args.input, args.out, args.cases, args.seed)


if __name__ == "__main__":
    main()
