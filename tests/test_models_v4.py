"""MobileNetV4: exact params, conv/linear MACs within 1% of the registry, timm's state-dict
names and shapes (committed fixtures from timm 1.0.31), forward shapes, and — where the side
venv with timm exists — the same outputs as timm on the same random weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm_side
import torch

from mobile_export.errors import UsageError
from mobile_export.models import get_spec
from mobile_export.models.blocks import MultiQueryAttention2d, UniversalInvertedResidual
from mobile_export.models.stats import LAYER_OPS, build_on_meta, count_params, flops_by_op
from mobile_export.models.v4 import VARIANTS, mobilenet_v4

KINDS = list(VARIANTS)
FIXTURES = Path(__file__).parent / "fixtures" / "reference" / "timm"


@pytest.mark.parametrize("kind", KINDS)
def test_params_equal_registry_and_timm_names_shapes(kind):
    model = build_on_meta(mobilenet_v4, kind=kind)
    spec = get_spec(f"mobilenet_v4_{kind}")
    reference = json.loads((FIXTURES / f"mobilenetv4_{kind}.json").read_text())
    assert count_params(model) == spec.params == reference["params"]
    ours = [[name, list(t.shape)] for name, t in model.state_dict().items()]
    assert ours == reference["state_dict"]  # same names, shapes and order as timm


@pytest.mark.parametrize("kind", KINDS)
def test_conv_linear_macs_within_one_percent(kind):
    spec = get_spec(f"mobilenet_v4_{kind}")
    flops = flops_by_op(build_on_meta(mobilenet_v4, kind=kind), spec.resolution)  # what count_macs sums
    layer_macs = sum(v for op, v in flops.items() if op in LAYER_OPS) // 2
    assert layer_macs / 1e6 == pytest.approx(spec.mmacs, rel=0.01)
    assert (flops.get("aten.bmm", 0) > 0) == kind.startswith("hybrid")  # MQA is plain matmuls, counted apart


def test_block_forms_follow_the_table():
    """Conv-S stage 2: ExtraDW (start+mid, stride on mid), 4 x IB (mid only), ConvNext (start only)."""
    stage = build_on_meta(mobilenet_v4, kind="conv_small").blocks[2]
    extra_dw, ib, convnext = stage[0], stage[1], stage[5]
    assert all(isinstance(b, UniversalInvertedResidual) for b in stage)
    assert extra_dw.dw_start.conv.stride == (1, 1) and extra_dw.dw_mid.conv.stride == (2, 2)
    assert isinstance(ib.dw_start, torch.nn.Identity) and ib.dw_mid.conv.kernel_size == (3, 3)
    assert isinstance(convnext.dw_mid, torch.nn.Identity) and convnext.dw_start.conv.kernel_size == (3, 3)
    assert not extra_dw.has_skip and ib.has_skip
    hybrid = build_on_meta(mobilenet_v4, kind="hybrid_medium")
    assert isinstance(hybrid.blocks[2][4].attn, MultiQueryAttention2d)
    assert hybrid.blocks[2][4].layer_scale.gamma.shape == (160,)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_shapes_at_small_resolution(kind, one_thread):
    torch.manual_seed(0)
    model = mobilenet_v4(num_classes=7, kind=kind).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 96, 96))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_unknown_kind_is_a_usage_error():
    with pytest.raises(UsageError, match="conv_small"):
        mobilenet_v4(kind="conv_tiny")


@pytest.mark.sidecar  # skips by itself without a side python (conftest)
def test_outputs_equal_timm_on_the_same_weights(tmp_path, one_thread):
    """Conv-S and Hybrid-M (MQA with key/value downsampling, layer scale) at 128x128."""
    kinds = ["conv_small", "hybrid_medium"]
    refs = timm_side.timm_references([(f"mobilenetv4_{k}", 128, {}) for k in kinds], tmp_path, seed=1)
    for kind, ref in zip(kinds, refs):
        model = mobilenet_v4(kind=kind).eval()
        model.load_state_dict(ref["state"], strict=True)  # timm names load with no renaming
        with torch.no_grad():
            out = model(ref["input"])
        assert (out - ref["output"]).abs().max().item() <= 1e-5, kind
