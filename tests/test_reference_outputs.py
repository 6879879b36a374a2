"""Loading a torchvision or timm checkpoint gives the torchvision/timm model's outputs.

The real libraries run in a side python (torch 2.14.1 + torchvision 0.29.1 + timm; PyPI's
torchvision does not import beside the project's torch 2.13 CPU). There,
scripts/reference_fixtures.py builds each reference model with a seeded random init whose BN
statistics, affine terms and layer scales are all non-trivial, saves its state dict as the
library would (.pth / .safetensors) and its output on a real photo. Here our loader reads that
file through `create_model(..., weights=PATH)` and our model must agree: max abs diff <= 2e-5 of
the logits' range in fp32 (tests/sidecar.py says why). Skips, saying why, when no side python is found (env MOBILE_EXPORT_SIDECAR_PYTHON,
else the fallbacks in tests/sidecar.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.sidecar

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "reference_fixtures.py"
from sidecar import SIDE_PYTHON, SKIP_REASON, fp32_tolerance  # noqa: E402

RESOLUTION = 128  # small, but every stage still sees a spatial map (4x4 at stride 32)

# library:model:format[:num_classes] -> the checkpoint kind users actually have.
CASES = (
    "torchvision:mobilenet_v2:pth",
    "torchvision:mobilenet_v3_large:pth",
    "torchvision:mobilenet_v3_small:pth",
    "timm:mobilenetv1_100:safetensors",
    "timm:mobilenetv2_140:pth",
    "timm:mobilenetv3_small_075:safetensors:10",  # a fine-tuned head: classes read from the file
    "timm:mobilenetv4_conv_small:safetensors",
    "timm:mobilenetv4_hybrid_medium:safetensors",
)


def _side_python() -> tuple[str | None, str]:
    return (SIDE_PYTHON, "") if SIDE_PYTHON else (None, SKIP_REASON)


def _v4_available() -> bool:
    try:
        import mobile_export.models.v4  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Run the side python once for every case; returns (folder, input tensor)."""
    python, why = _side_python()
    if python is None:
        pytest.skip(why)
    from safetensors.torch import save_file
    from skimage import data

    from mobile_export.models.registry import Preprocess
    from mobile_export.preprocess import normalize, resize_crop

    out = tmp_path_factory.mktemp("reference")
    pre = Preprocess(crop=RESOLUTION, resize=round(RESOLUTION / 0.875))
    x = torch.from_numpy(normalize(resize_crop(data.chelsea(), pre), pre))[None].contiguous()
    save_file({"input": x}, str(out / "input.safetensors"))
    cases = [c for c in CASES if "mobilenetv4" not in c or _v4_available()]
    run = subprocess.run(
        [
            python,
            str(SCRIPT),
            "outputs",
            "--input",
            str(out / "input.safetensors"),
            "--out",
            str(out),
            "--seed",
            "0",
            *cases,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if run.returncode != 0 and "ModuleNotFoundError" in run.stderr:  # a python without the libraries
        pytest.skip(
            f"side python {python!r} lacks torchvision/timm/safetensors: {run.stderr.strip().splitlines()[-1]}"
        )
    if run.returncode != 0:
        pytest.fail(f"side python failed:\n{run.stderr[-3000:]}")
    sys.stderr.write(run.stderr)
    return out, x


def _ours(folder: Path, case: str, **kwargs):
    from mobile_export.models import create_model

    _, name, fmt, *_ = case.split(":")
    return create_model(name, weights=str(folder / f"{name}.{fmt}"), **kwargs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.split(":")[1])
def test_loaded_checkpoint_matches_the_reference_library(reference, case):
    from safetensors.torch import load_file

    folder, x = reference
    library, name, fmt, *rest = case.split(":")
    if "mobilenetv4" in name and not _v4_available():
        pytest.skip("mobile_export.models.v4 does not exist yet")
    expected = load_file(str(folder / f"{name}.out.safetensors"))["output"]
    built = _ours(folder, case)
    assert built.weights["format"] == library and built.weights["source"] == "file"
    assert built.num_classes == (int(rest[0]) if rest else 1000)
    with torch.no_grad():
        got = built.module(x)
    assert got.shape == expected.shape
    assert expected.std() > 0.05, "reference logits are nearly constant: the comparison would prove little"
    diff = (got - expected).abs().max().item()
    tolerance = fp32_tolerance(expected)
    assert diff <= tolerance, f"{case}: max abs diff {diff:.3g} > {tolerance:.3g}"


def test_the_comparison_can_fail(reference):
    """Control: torchvision V3 without its BatchNorm eps (1e-3) is measurably different, so
    the agreement above is not an artifact of insensitive outputs."""
    from safetensors.torch import load_file

    from mobile_export.models import build_architecture, get_spec
    from mobile_export.models import weights as W

    folder, x = reference
    spec = get_spec("mobilenet_v3_small")
    module = build_architecture(spec).eval()  # timm's eps 1e-5
    W.load_into(
        module,
        spec,
        str(folder / "mobilenet_v3_small.pth"),
        W.resolve_source(spec, str(folder / "mobilenet_v3_small.pth"))[0],
        1000,
    )
    expected = load_file(str(folder / "mobilenet_v3_small.out.safetensors"))["output"]
    with torch.no_grad():
        diff = (module(x) - expected).abs().max().item()
    assert diff > 100 * fp32_tolerance(expected)
