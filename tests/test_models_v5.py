"""MobileNetV5 (Gemma 3n encoder and the base classifier): exact params (MACs are checked
for every variant in test_models.py), timm's state-dict names and shapes (committed fixtures from timm 1.0.31), and the same outputs
as timm on the same random weights. Default tests use timm's channel multiplier (same
structure, 1/4 of the widths) at small inputs; the full-size comparisons are slow tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm_side
import torch

from mobile_export.errors import UsageError
from mobile_export.models import create_model, get_spec
from mobile_export.models.blocks import Conv2dSame, MobileAttention, RmsNormAct2d
from mobile_export.models.stats import build_on_meta, count_params
from mobile_export.models.v5 import mobilenet_v5

FIXTURES = Path(__file__).parent / "fixtures" / "reference" / "timm"
CASES = [("300m", "mobilenetv5_300m_enc"), ("base", "mobilenetv5_base")]


@pytest.mark.parametrize("kind,timm_name", CASES)
def test_params_equal_registry_and_timm_names_shapes(kind, timm_name):
    model = build_on_meta(mobilenet_v5, kind=kind)
    spec = get_spec(f"mobilenet_v5_{kind}")
    reference = json.loads((FIXTURES / f"{timm_name}.json").read_text())
    assert count_params(model) == spec.params == reference["params"]  # 294,126,912 / 82,647,976
    ours = [[name, list(t.shape)] for name, t in model.state_dict().items()]
    assert ours == reference["state_dict"]


def test_structure_counts_follow_the_table():
    """300m: 23 UIB + 14 MQA in stage 2 (kv downsampled by 2), 20 UIB + 19 MQA in stage 3."""
    blocks = build_on_meta(mobilenet_v5, kind="300m").blocks
    for stage, uib, mqa, kv_down in ((blocks[2], 23, 14, True), (blocks[3], 20, 19, False)):
        attn = [b for b in stage if isinstance(b, MobileAttention)]
        assert (len(stage) - len(attn), len(attn)) == (uib, mqa)
        assert all(hasattr(b.attn.key, "down_conv") == kv_down for b in attn)
    assert isinstance(blocks[0][0].conv_exp, Conv2dSame)  # TF 'SAME' on strided convs (encoder)
    assert not isinstance(build_on_meta(mobilenet_v5, kind="base").blocks[0][0].conv_exp, Conv2dSame)


@pytest.mark.parametrize("size", [7, 8, 33])
def test_tf_same_padding_gives_ceil_size_and_pads_bottom_right(size):
    conv = Conv2dSame(1, 1, 3, stride=2, padding=0, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left tap of each window
    x = torch.arange(1, size * size + 1, dtype=torch.float32).reshape(1, 1, size, size)
    y = conv(x)
    assert y.shape[-2:] == (-(-size // 2),) * 2  # ceil(size / stride), as TF
    # odd sizes pad one pixel on each side (the first tap is padding); even sizes pad only
    # bottom/right (the first tap is the first pixel)
    assert y[0, 0, 0, 0].item() == (0.0 if size % 2 else 1.0)


def test_rms_norm_is_over_channels_without_mean():
    norm = RmsNormAct2d(4)
    x = torch.randn(2, 4, 3, 3) + 5.0
    y = norm(x)
    expected = x / torch.sqrt((x * x).mean(1, keepdim=True) + 1e-6)
    assert torch.allclose(y, expected, atol=1e-6)


def test_forward_shapes(one_thread):
    torch.manual_seed(0)
    encoder = mobilenet_v5(kind="300m", width=0.25).eval()
    base = mobilenet_v5(num_classes=5, kind="base", width=0.25).eval()
    with torch.no_grad():
        assert encoder(torch.rand(1, 3, 128, 128)).shape == (1, 2048, 16, 16)
        assert base(torch.rand(2, 3, 96, 96)).shape == (2, 5)


def test_encoder_rejects_num_classes():
    with pytest.raises(UsageError, match="feature encoder"):
        create_model("v5-300m", weights="random", num_classes=10)


def test_verify_rebuilds_the_encoder_from_its_manifest(one_thread):
    """A standalone `verify` of an encoder artifact rebuilds the reference from the manifest,
    which records num_classes 0: that must not be passed on as a class count."""
    from mobile_export.verify.reference import rebuild_reference

    manifest = {
        "model": {
            "name": "mobilenet_v5_300m",
            "num_classes": 0,
            "output": "features",
            "resolution": 64,
            "weights": {"source": "random", "seed": 0},
        }
    }
    built = rebuild_reference(manifest)
    assert (built.spec.output, built.resolution) == ("features", 64)
    with torch.no_grad():
        assert built.module(torch.rand(built.input_shape)).shape == (1, 2048, 16, 16)


side = pytest.mark.sidecar  # skips by itself without a side python (conftest)
TIMM_NAMES = dict(CASES)


def _max_abs_diff(kind: str, width: float, ref: dict) -> float:
    model = mobilenet_v5(kind=kind, width=width).eval()
    model.load_state_dict(ref["state"], strict=True)  # timm names load with no renaming
    with torch.no_grad():
        out = model(ref["input"])
    assert out.shape == ref["output"].shape
    return (out - ref["output"]).abs().max().item()


def _compare(runs: list[tuple[str, int, float]], folder: Path) -> list[float]:
    cases = [
        (TIMM_NAMES[kind], res, {} if width == 1.0 else {"channel_multiplier": width})
        for kind, res, width in runs
    ]
    refs = timm_side.timm_references(cases, folder, seed=2)
    return [_max_abs_diff(kind, width, ref) for (kind, _res, width), ref in zip(runs, refs)]


@side
def test_narrow_outputs_equal_timm(tmp_path, one_thread):
    """Same structure at 1/4 width. 300m at 256: TF padding on even sizes, and the MSFA's
    2x nearest upsampling (our transposed conv) at a 16x16 grid; base at 128: 8x8 -> bilinear."""
    diffs = _compare([("300m", 256, 0.25), ("base", 128, 0.25)], tmp_path)
    assert max(diffs) <= 1e-4, diffs


@side
@pytest.mark.slow
def test_full_size_outputs_equal_timm(tmp_path, one_thread):
    """Full width. 300m at 512: 32x32 average-pooled to 16x16; at 200: odd sizes (TF padding
    pads both sides) and a 13x13 map resized bilinearly; base at 256."""
    diffs = _compare([("300m", 512, 1.0), ("300m", 200, 1.0), ("base", 256, 1.0)], tmp_path)
    assert max(diffs) <= 1e-4, diffs


class _V5Piece(torch.nn.Module):
    """A strided UIB, a Mobile MQA with key/value downsampling and the MSFA (2x nearest path,
    average pool to the grid), with V5's style: every op kind of the full model, small."""

    def __init__(self):
        super().__init__()
        from mobile_export.models.blocks import BlockStyle, UniversalInvertedResidual
        from mobile_export.models.v5 import MultiScaleFusionAdapter

        style = BlockStyle(act="gelu_tanh", norm="rms", eps=1e-6, layer_scale=1e-5, tf_same=True)
        self.uib = UniversalInvertedResidual(16, 16, 3, 5, 2, 2, style)
        self.attn = MobileAttention(16, 16, 4, 8, 2, 3, style)
        self.down = UniversalInvertedResidual(16, 24, 3, 3, 2, 2, style)
        self.msfa = MultiScaleFusionAdapter([16, 24], 32, 4, style)

    def forward(self, x):
        fine = self.attn(self.uib(x))
        return self.msfa(fine, self.down(fine))


def test_exported_graph_has_only_ops_xnnpack_takes():
    """What split the graph into 172 XNNPACK pieces before: mean over channels (RMSNorm) and
    nearest upsampling (MSFA). Attention must be plain bmm + softmax, not fused SDPA."""
    torch.manual_seed(0)
    piece = _V5Piece().eval()
    with torch.no_grad():
        graph = torch.export.export(piece, (torch.rand(1, 16, 32, 32),)).graph
    ops = {str(n.target) for n in graph.nodes if n.op == "call_function"}
    assert any("softmax" in op for op in ops) and ops & {"aten.bmm.default", "aten.matmul.default"}, ops
    assert not any("upsample_nearest" in op or "scaled_dot_product" in op for op in ops), ops
    channel_means = [
        n for n in graph.nodes if str(n.target) == "aten.mean.dim" and sorted(n.args[1]) != [2, 3]
    ]
    assert not channel_means


@pytest.mark.slow
def test_v5_piece_lowers_whole_to_xnnpack():
    from mobile_export.executorch.lowering import lower

    torch.manual_seed(0)
    _, delegation = lower(_V5Piece().eval(), torch.rand(1, 16, 32, 32))
    assert delegation["complete"] and delegation["delegated_subgraphs"] == 1, delegation["outside"]


def test_int8_keeps_the_signal_through_layer_scale(one_thread):
    """int8 V5 (quantized PyTorch graph, 1/4 width, 96 px, calibrated on the bundled photos)
    stays close to float. With random init the layer scale is 1e-5 and the first block of each
    stage has no residual, so its output is ~4e-5: under XNNPACKQuantizer's scale floor of
    2**-12 it rounded to zero and the whole network measured 0 dB against float."""
    from mobile_export.models.registry import Preprocess
    from mobile_export.quantize import QuantRecipe, load_calibration, quantize_pt2e
    from mobile_export.verify import metrics
    from mobile_export.verify.reference import run_module

    torch.manual_seed(0)
    model = mobilenet_v5(num_classes=10, kind="base", width=0.25).eval()
    photos = load_calibration(None, Preprocess(crop=96, resize=96), progress=False).inputs
    quantized = quantize_pt2e(model, torch.zeros(1, 3, 96, 96), photos, QuantRecipe())
    reference, int8 = run_module(model, photos), run_module(quantized.graph_module, photos)
    assert reference.std(axis=0).mean() > 1e-3 * abs(reference).mean()  # outputs depend on the photo
    assert metrics.sqnr_db(reference, int8) > 15.0
