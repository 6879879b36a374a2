"""Calibration data (real photos, the model's own preprocessing, skipped and counted files,
refusals) and the PT2E recipe knobs (observer, layers kept in fp32)."""

from __future__ import annotations

import numpy as np
import pytest
from et_helpers import photo_folder

from mobile_export.errors import ExportError, ImageError
from mobile_export.models.registry import Preprocess
from mobile_export.preprocess import bundled_photos, load_input
from mobile_export.quantize import QuantRecipe, load_calibration, quantize_pt2e

PRE = Preprocess(crop=32, resize=36, interpolation="bilinear")


def test_folder_recursive_bounded_skips_and_counts(tmp_path):
    folder = photo_folder(tmp_path / "photos", unreadable=2)
    logs = []
    cal = load_calibration(folder, PRE, limit=64, log=logs.append, progress=False)
    n = len(bundled_photos())
    assert len(cal.inputs) == n and len(cal.skipped) == 2
    assert all(x.shape == (1, 3, 32, 32) and x.dtype == np.float32 for x in cal.inputs)
    assert any("skipped 2 unreadable" in m for m in logs)
    rec = cal.record()
    assert rec["source"] == "folder" and rec["images"] == n and rec["skipped"] == 2 and rec["folder"]
    # the model's own preprocessing: identical to loading that file through preprocess
    first = cal.paths[0]
    np.testing.assert_array_equal(cal.inputs[0], load_input(first, PRE, normalized=True))
    raw = load_calibration(folder, PRE, limit=64, normalized=False, progress=False)
    assert 0.0 <= raw.inputs[0].min() and raw.inputs[0].max() <= 1.0
    # bounded, deterministic sample
    small = load_calibration(folder, PRE, limit=4, progress=False)
    again = load_calibration(folder, PRE, limit=4, progress=False)
    assert len(small.paths) + len(small.skipped) == 4 and small.paths == again.paths


def test_empty_and_unreadable_folders_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="no images"):
        load_calibration(tmp_path / "empty", PRE, progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"nope")
    with pytest.raises(ImageError, match="could be read"):
        load_calibration(bad, PRE, progress=False)
    with pytest.raises(ImageError, match="does not exist"):
        load_calibration(tmp_path / "missing", PRE, progress=False)


def test_fallback_warns_and_uses_bundled_photos():
    logs = []
    cal = load_calibration(None, PRE, log=logs.append, progress=False)
    assert cal.source == "bundled" and len(cal.inputs) == len(bundled_photos()) >= 5
    assert logs[0].startswith("WARNING: no --calibration folder given") and "--calibration DIR" in logs[0]


def _net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 5),
    ).eval()


@pytest.fixture(scope="module")
def calib():
    return load_calibration(None, PRE, progress=False).inputs


def test_recipe_knobs_change_the_result(calib):
    import torch

    example = torch.zeros(1, 3, 32, 32)
    hist = quantize_pt2e(_net(), example, calib, QuantRecipe(observer="histogram"))
    minmax = quantize_pt2e(_net(), example, calib, QuantRecipe(observer="minmax"))
    assert hist.output_scale > 0 and minmax.output_scale > 0
    assert hist.output_scale != minmax.output_scale  # histogram clips, min-max does not
    assert isinstance(hist.output_zero_point, int) and -128 <= hist.output_zero_point <= 127  # int8 (qint8)
    # deterministic: same inputs, same scales
    assert (
        quantize_pt2e(_net(), example, calib, QuantRecipe(observer="histogram")).output_scale
        == hist.output_scale
    )
    # keep the classifier (module "6") in fp32: its input is no longer dequantized int8
    kept = quantize_pt2e(_net(), example, calib, QuantRecipe(fp32_modules=("6",)))
    assert kept.kept_fp32_nodes == 1 and hist.kept_fp32_nodes == 0
    assert kept.output_scale is None  # the output stays float
    # quantized model is close to float on the calibration photos
    from mobile_export.verify import metrics
    from mobile_export.verify.reference import run_module

    assert metrics.sqnr_db(run_module(_net(), calib), run_module(hist.graph_module, calib)) > 20


def test_recipe_round_trip_and_refusals(calib):
    import torch

    r = QuantRecipe(observer="minmax", per_channel=False, fp32_modules=("features.0", "classifier"))
    assert QuantRecipe.from_dict(r.to_dict()) == r
    assert QuantRecipe.from_dict(None) == QuantRecipe()
    with pytest.raises(ExportError, match="unknown activation observer"):
        quantize_pt2e(_net(), torch.zeros(1, 3, 32, 32), calib, QuantRecipe(observer="bogus"))
    with pytest.raises(ExportError, match="at least one calibration image"):
        quantize_pt2e(_net(), torch.zeros(1, 3, 32, 32), [], QuantRecipe())


# --- layer-by-layer bias correction and glob fp32_modules ---------------------------------


def _mean_logit_shift(graph_module, calib) -> np.ndarray:
    import torch

    with torch.no_grad():
        q = np.concatenate([graph_module(torch.from_numpy(x)).numpy() for x in calib])
        f = np.concatenate([_net()(torch.from_numpy(x)).numpy() for x in calib])
    return np.abs((q - f).mean(axis=0))


def test_bias_correction_removes_the_mean_shift(calib):
    import torch

    example = torch.zeros(1, 3, 32, 32)
    logs = []
    plain = quantize_pt2e(_net(), example, calib, QuantRecipe(observer="minmax"))
    corrected = quantize_pt2e(
        _net(), example, calib, QuantRecipe(observer="minmax", bias_correction=True), log=logs.append
    )
    assert any("bias correction on 3 layer(s)" in m for m in logs)  # two convs and the linear
    before, after = (
        _mean_logit_shift(plain.graph_module, calib),
        _mean_logit_shift(corrected.graph_module, calib),
    )
    # what is left is the int8 output rounding (half a step at most), not the accumulated shift
    assert after.max() <= 0.5 * corrected.output_scale + 1e-6
    assert after.max() < before.max()
    assert QuantRecipe.from_dict(QuantRecipe(bias_correction=True).to_dict()).bias_correction


def test_fp32_modules_accepts_globs(calib):
    import torch

    kept = quantize_pt2e(_net(), torch.zeros(1, 3, 32, 32), calib, QuantRecipe(fp32_modules=("[6]",)))
    assert kept.kept_fp32_nodes == 1 and kept.output_scale is None


def _relu6_net():
    """conv -> BN -> ReLU6, twice: the MobileNetV1/V2 pattern. BN shifts the pre-activation
    well below zero, so a grid spanning the raw conv output wastes most of its 256 steps."""
    import torch

    torch.manual_seed(0)
    layers = []
    for cin in (3, 8):
        conv, bn = torch.nn.Conv2d(cin, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        bn.running_mean.fill_(0.3)  # pre-activation mostly negative
        layers += [conv, bn, torch.nn.ReLU6()]
    return torch.nn.Sequential(
        *layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)
    ).eval()


def _hardtanh_grids(graph_module) -> list[tuple[float, int]]:
    """(scale, zero point) of the quantize node that follows each hardtanh."""
    from mobile_export.quantize.pt2e import _constant

    grids = []
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and "hardtanh" in str(node.target):
            (q,) = [u for u in node.users if "quantize_per_tensor" in str(u.target)]
            grids.append((float(_constant(graph_module, q.args[1])), int(_constant(graph_module, q.args[2]))))
    return grids


def test_relu6_is_quantized_after_the_clamp(calib):
    """ReLU6 after a conv gets its own int8 grid on [0, 6] (zero point -128), the conv feeds it
    directly (no quantize between them: XNNPACK fuses the clamp into the conv), and the result
    is closer to float than XNNPACKQuantizer's own annotation, which shares the conv's grid."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from mobile_export.quantize.pt2e import quantization_config
    from mobile_export.verify import metrics
    from mobile_export.verify.reference import run_module

    example = torch.zeros(1, 3, 32, 32)
    ours = quantize_pt2e(_relu6_net(), example, calib, QuantRecipe())
    grids = _hardtanh_grids(ours.graph_module)
    assert len(grids) == 2 and all(zp == -128 and scale <= 6.0 / 255 + 1e-9 for scale, zp in grids)
    for node in ours.graph_module.graph.nodes:
        if "hardtanh" in str(node.target):
            assert "conv" in str(node.args[0].target)

    prepared = prepare_pt2e(
        torch.export.export(_relu6_net(), (example,), strict=False).module(),
        XNNPACKQuantizer().set_global(quantization_config(QuantRecipe())),
    )
    with torch.no_grad():
        for x in calib:
            prepared(torch.from_numpy(x))
    stock = convert_pt2e(prepared)
    assert any(zp > -128 for _, zp in _hardtanh_grids(stock))  # the shared grid spans negatives
    reference = run_module(_relu6_net(), calib)
    assert (
        metrics.sqnr_db(reference, run_module(ours.graph_module, calib))
        > metrics.sqnr_db(reference, run_module(stock, calib)) + 3.0
    )


def test_tiny_activations_survive_quantization(calib):
    """A tensor of ~1e-5 (MobileNetV5's initial layer scale) keeps its shape through int8:
    with XNNPACKQuantizer's scale floor of 2**-12 it rounded to all zeros."""
    import torch

    from mobile_export.verify import metrics
    from mobile_export.verify.reference import run_module

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.gamma = torch.nn.Parameter(torch.full((1, 8, 1, 1), 1e-5))

        def forward(self, x):
            return self.conv(x) * self.gamma

    q = quantize_pt2e(Tiny().eval(), torch.zeros(1, 3, 32, 32), calib, QuantRecipe())
    reference = run_module(Tiny().eval(), calib)
    assert np.abs(reference).max() < 1e-4
    assert metrics.sqnr_db(reference, run_module(q.graph_module, calib)) > 20


def test_reference_computes_what_xnnpack_computes(calib):
    """Issue 18: the quantized PyTorch model adds each conv bias as XNNPACK stores it (int32 on
    input x weight scale) and takes int8 means as XNNPACK's qs8 mean does (exact mean, half to
    even), so on a conv -> 2x2 mean net (ties on a quarter of the pool's outputs) the runtime
    lands on the reference's int8 values; snapping the biases leaves the program's bytes alone."""
    import copy

    import torch
    from executorch.runtime import Runtime

    from mobile_export.executorch.lowering import lower
    from mobile_export.quantize import xnnpack_exact
    from mobile_export.quantize.graph_walk import attr

    class PoolNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 32, 3, stride=16, padding=1)
            self.fc = torch.nn.Linear(32, 5)

        def forward(self, x):
            y = torch.relu(self.conv(x)).mean((2, 3), keepdim=True)
            return self.fc(y.flatten(1))

    example = torch.zeros(1, 3, 32, 32)
    q = quantize_pt2e(PoolNet().eval(), example, calib, QuantRecipe())
    assert q.reference_module is not None
    assert sum("exact_int8_mean" in str(n.target) for n in q.reference.graph.nodes) == 1
    assert xnnpack_exact.snap_biases(q.graph_module) == 2  # idempotent: already on the grid
    unsnapped = copy.deepcopy(q.graph_module)
    for node in unsnapped.graph.nodes:
        if node.op == "call_function" and ("conv2d" in str(node.target) or "linear" in str(node.target)):
            bias = attr(unsnapped, node.args[2].target)
            bias.data += 1e-9  # off the grid; quantizes to the same int32 values
    program = bytes(lower(q.graph_module, example)[0].buffer)
    assert program == bytes(lower(unsnapped, example)[0].buffer)
    method = Runtime.get().load_program(program).load_method("forward")
    runtime = np.concatenate(
        [method.execute((torch.from_numpy(np.ascontiguousarray(x)),))[0].numpy() for x in calib]
    )
    with torch.no_grad():
        reference = np.concatenate([q.reference(torch.from_numpy(x)).numpy() for x in calib])
    assert np.abs(runtime - reference).max() <= 1e-6 + 0.01 * q.output_scale


def test_input_normalization_stays_float_and_old_manifests_rebuild_it_in_int8(calib):
    """The .pte's normalization wrapper is kept out of int8, so the image is quantized once, at
    the first conv; a manifest without the "float_input" key is a file from before, whose
    rebuilt reference quantizes the normalization as that file does."""
    import torch

    from mobile_export.executorch.lowering import with_normalization
    from mobile_export.executorch.quantized_reference import recipe_of

    def ops_on_the_image(recipe):
        wrapped = with_normalization(_net(), PRE.mean, PRE.std)
        raw = [np.asarray(x, np.float32) * np.array(PRE.std, np.float32).reshape(1, 3, 1, 1) for x in calib]
        quantized = quantize_pt2e(wrapped, torch.zeros(1, 3, 32, 32), raw, recipe)
        graph = quantized.graph_module.graph
        image = next(n for n in graph.nodes if n.op == "placeholder")
        return " ".join(str(user.target) for user in image.users)

    floating, quantized = ops_on_the_image(QuantRecipe()), ops_on_the_image(QuantRecipe(float_input=False))
    assert "mul" in floating and "quantize_per_tensor" not in floating
    assert "quantize_per_tensor" in quantized and "mul" not in quantized

    assert QuantRecipe().to_dict()["float_input"] is True
    assert recipe_of(QuantRecipe().to_dict()).float_input
    old = {k: v for k, v in QuantRecipe().to_dict().items() if k != "float_input"}
    assert not recipe_of(old).float_input
