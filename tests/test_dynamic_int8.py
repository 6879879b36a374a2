"""int8 with dynamic activations (issue 18): `--quantize int8 --recipe dynamic`. Each conv/linear
input is quantized per image at run time (XNNPACK qd8-f32-qc8w), weights are int8, depthwise
convs and the ops between convs stay fp32, and nothing is calibrated.

The claims tested: the recipe is recorded in the manifest and static manifests are unchanged;
options that need calibration are refused in one line; through the CLI on a trained model the
.pte really runs dynamic quantization (choose_qparams inside the delegate), is closer to float
than the calibrated static file, and `verify` rebuilds its reference without any images; on the
fragile photo model (slow) it meets the issue's goal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
TRAINED = ROOT / "tests" / "fixtures" / "trained"
DIGITS = TRAINED / "mobilenet_v2_035_digits_64.safetensors"

pytest.importorskip("executorch")
pytest.importorskip("sklearn")


def test_dynamic_recipe_in_the_manifest_and_static_ones_unchanged():
    from mobile_export.quantize import QuantRecipe

    assert "activations" not in QuantRecipe().to_dict()
    dynamic = QuantRecipe(activations="dynamic")
    assert dynamic.to_dict()["activations"] == "dynamic" and dynamic.dynamic and not dynamic.learned
    assert QuantRecipe.from_dict(dynamic.to_dict()) == dynamic
    assert not QuantRecipe.from_dict({"observer": "histogram"}).dynamic  # manifests from before


@pytest.mark.parametrize(
    "flags, named",
    [
        (("--bias-correction",), "--bias-correction"),
        (("--keep-fp32", "auto"), "--keep-fp32 auto"),
    ],
)
def test_dynamic_refuses_calibration_based_options(cli, tmp_path, flags, named):
    code, _, err = cli(
        "v2-035",
        "--target",
        "executorch",
        "--quantize",
        "int8",
        "--recipe",
        "dynamic",
        *flags,
        "--out",
        tmp_path,
    )
    assert code == 2 and "--recipe dynamic" in err and f"drop {named}" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.pte"))


def test_unknown_activation_quantization_names_the_choices():
    from mobile_export.errors import ExportError
    from mobile_export.quantize import QuantRecipe

    with pytest.raises(ExportError, match="choose one of static, dynamic"):
        QuantRecipe(activations="per-channel")


def test_dynamic_quantizes_convs_before_relu_and_leaves_depthwise_float():
    """XNNPACKQuantizer's dynamic conv pattern skips a conv whose one user is a relu; ours
    annotates it (V4 Conv-S was 8.4 MB instead of 2.8 MB). Depthwise convs stay float."""
    import torch

    from mobile_export.quantize import QuantRecipe, quantize_pt2e
    from mobile_export.quantize.graph_walk import attr

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, groups=8),  # depthwise
        torch.nn.ReLU6(),
        torch.nn.Conv2d(8, 4, 1),
    ).eval()
    q = quantize_pt2e(model, torch.rand(1, 3, 12, 12), [], QuantRecipe(activations="dynamic"))
    nodes = list(q.graph_module.graph.nodes)
    chooses = [n for n in nodes if "choose_qparams" in str(n.target)]
    convs = [n for n in nodes if "conv2d" in str(n.target)]
    quantized = [c for c in convs if "dequantize_per_tensor" in str(c.args[0].target)]
    assert len(chooses) == 2 and len(convs) == 3
    in_channels = [int(attr(q.graph_module, c.args[1].args[0].target).shape[1]) for c in quantized]
    assert in_channels == [3, 8]  # the depthwise conv (1 input channel per group) stays float
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(q.graph_module(x), model(x), atol=0.05 * float(model(x).abs().max()))


def _export(cli, out: Path, *flags) -> tuple[dict, str]:
    """Export the trained digits model to int8 .pte through the CLI: (manifest entry, stderr)."""
    code, _, err = cli(
        "mobilenet_v2_035",
        "--target",
        "executorch",
        "--weights",
        DIGITS,
        "--resolution",
        64,
        "--quantize",
        "int8",
        *flags,
        "--out",
        out,
    )
    assert code == 0, err
    return json.loads((out / "manifest.json").read_text())["artifacts"][0], err


def test_dynamic_int8_through_the_cli_on_a_trained_model(cli, tmp_path, one_thread):
    """The trained digits V2 0.35: the dynamic .pte against float and against the calibrated
    static .pte on held-out digits, both run in the runtime; then `verify` on its own."""
    import train_small
    from et_helpers import photo_folder

    from mobile_export.executorch.target import ExecuTorchTarget

    entry, err = _export(cli, tmp_path / "dyn", "--recipe", "dynamic")
    assert "WARNING: no --calibration" not in err and "dynamic activations" in err
    quant = entry["quantization"]
    assert quant["activations"] == "dynamic" and quant["calibration"] == {"source": "none", "images": 0}
    assert "dynamic activations" in quant["scheme"] and quant["output_scale"] is None
    ops = entry["delegation"]["by_operator"]
    assert (
        ops.get("quantized_decomposed.choose_qparams.tensor", 0) >= 30 and not entry["delegation"]["outside"]
    )
    assert entry["parity"]["passed"]

    calibration = photo_folder(tmp_path / "photos", unreadable=0)
    static, _ = _export(cli, tmp_path / "static", "--calibration", calibration)
    assert "activations" not in static["quantization"]

    model, meta, pre = train_small.load_checkpoint(DIGITS)
    data = train_small.load_dataset(meta["dataset"], meta["resolution"], seed=0, cache=False)
    x = np.ascontiguousarray(data.test_x.astype(np.float32).transpose(0, 3, 1, 2) / 255.0)[::2]
    reference = train_small.logits_of(model, train_small.to_inputs(data.test_x[::2], pre))
    target = ExecuTorchTarget()

    def agreement_and_sqnr(out: Path, manifest_entry: dict):
        from mobile_export.verify.metrics import sqnr_db

        got = np.concatenate(target.run(out / manifest_entry["file"], manifest_entry, [v[None] for v in x]))
        return float((got.argmax(1) == reference.argmax(1)).mean()), sqnr_db(reference, got)

    dyn_agree, dyn_db = agreement_and_sqnr(tmp_path / "dyn", entry)
    static_agree, static_db = agreement_and_sqnr(tmp_path / "static", static)
    detail = f"dynamic {dyn_agree:.4f} / {dyn_db:.2f} dB, static {static_agree:.4f} / {static_db:.2f} dB"
    assert dyn_agree >= 0.99 and dyn_db > static_db + 2.0, detail

    code, stdout, err = cli("verify", tmp_path / "dyn" / entry["file"], "--json")
    assert code == 0, err
    report = json.loads(stdout)
    report = report["reports"][0] if "reports" in report else report
    assert "dynamic activations" in report["quantized_reference"], report["quantized_reference"]
    assert report["vs_quantized"]["sqnr_db"] >= 25.0 and report["passed"]

    # The phone's own qd8 kernels (sdot on the A76, i8mm on the A710) under QEMU, when the kit is here.
    from mobile_export.errors import ArmSetupError
    from mobile_export.executorch.arm import find_kit, parse_cpus
    from mobile_export.verify import verify_artifact

    try:
        find_kit()
    except ArmSetupError as exc:
        pytest.skip(f"ARM emulation kit not set up ({exc}); run `mobile-export setup-arm`")
    arm = verify_artifact(tmp_path / "dyn" / entry["file"], cpus=parse_cpus("cortex-a76,cortex-a710"))
    rows = {row["cpu"]: row for row in arm["arm"]["rows"]}
    assert rows["cortex-a76"]["kernels"] == "sdot" and rows["cortex-a710"]["kernels"] == "i8mm"
    for row in rows.values():  # measured: 46-47 dB from x86, 33 dB from float on V2 0.35 photos
        assert row["passed"] and row["vs_x86"]["sqnr_db"] >= 35.0, row
        assert abs(row["vs_float"]["sqnr_db"] - arm["vs_float"]["sqnr_db"]) < 1.5, row


def test_arm_bench_keeps_static_and_dynamic_int8_apart():
    """bench --cpu given an fp32, a static and a dynamic int8 file of one model gives each int8
    file its own ratio (both were named int8, and one ratio hid the other)."""
    from mobile_export.executorch.arm.bench import _ratios, _variant

    assert _variant({"precision": "int8", "quantization": {"activations": "dynamic"}}) == "int8 dynamic"
    assert _variant({"precision": "int8", "quantization": {"mode": "pt2e-int8"}}) == "int8"
    files = [
        {
            "model": "m",
            "resolution": 64,
            "precision": p,
            "variant": v,
            "cpus": [{"cpu": "a55", "instructions": n}],
        }
        for p, v, n in (("fp32", "fp32", 100.0), ("int8", "int8", 40.0), ("int8", "int8 dynamic", 60.0))
    ]
    assert [(r["variant"], r["ratio"]) for r in _ratios(files)] == [("int8", 0.4), ("int8 dynamic", 0.6)]


@pytest.mark.slow
def test_dynamic_int8_meets_the_goal_on_the_fragile_photo_model(tmp_path, one_thread):
    """Issue 18's fragile model (MobileNetV2 0.35, 17-way photo task): the dynamic .pte run in
    the runtime on the 1,020 held-out crops. Measured (docs/int8_quality.md round 9): 99.41%
    agreement, 33.46 dB, drop 0.29 points; the calibrated recipes stop at 98.1-98.5%."""
    import int8_quality

    row = int8_quality.measure(
        TRAINED / "mobilenet_v2_035_photos_64.safetensors", "dynamic", 0, 64, tmp_path, {}
    )
    detail = f"{row.agreement:.2f}% {row.sqnr_db:.2f} dB drop {row.drop:+.2f}"
    print(detail)
    assert row.agreement >= 99.0 and row.drop <= 0.3 and row.sqnr_db >= 26.0, detail
    assert row.pte_vs_quantized_pytorch_agreement >= 99.0, detail
