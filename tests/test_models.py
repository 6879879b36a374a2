"""The family as the registry states it: exact parameter counts, MACs from torch's FLOP counter,
forward shapes on real tensors, name resolution. Parametrized over every registered variant,
so new generations are covered as soon as their rows exist.

The `sidecar` tests build the real timm / torchvision models in a side venv and prove our
V1-V3 state dicts have timm's names and shapes (and torchvision's, by order) and give the same
outputs on the same weights."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from mobile_export.errors import UnknownModelError
from mobile_export.models import all_specs, build_architecture, get_spec
from mobile_export.models.blocks import HardSigmoid, make_divisible
from mobile_export.models.stats import count_macs, count_params

SPECS = all_specs()
ids = [s.name for s in SPECS]
HEAVY = 50_000_000  # params above which a real (non-meta) forward is a slow test


def on_meta(spec, **kwargs):
    with torch.device("meta"):
        return build_architecture(spec, **kwargs)


def heavy(spec):
    return (
        pytest.param(spec, marks=pytest.mark.slow, id=spec.name)
        if spec.params > HEAVY
        else pytest.param(spec, id=spec.name)
    )


@pytest.fixture(scope="module")
def real_models():
    """One eval-mode model with random weights per spec, built on first use."""
    cache = {}

    def get(spec):
        if spec.name not in cache:
            torch.manual_seed(0)
            cache[spec.name] = build_architecture(spec).eval()
        return cache[spec.name]

    return get


# --- facts -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_params_equal_registry_exactly(spec):
    assert count_params(on_meta(spec)) == spec.params


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_macs_within_one_percent_of_registry(spec):
    mmacs = count_macs(on_meta(spec), spec.resolution) / 1e6
    assert mmacs == pytest.approx(spec.mmacs, rel=0.01)


OTHER_RES = [(s, r) for s in SPECS for r in s.other_resolutions]


@pytest.mark.parametrize("spec,res", OTHER_RES, ids=[f"{s.name}@{r}" for s, r in OTHER_RES])
def test_macs_at_other_published_resolutions(spec, res):
    expected_mmacs, _top1 = spec.other_resolutions[res]
    assert count_macs(on_meta(spec), res) / 1e6 == pytest.approx(expected_mmacs, rel=0.01)


class _ConvThenSelfAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)

    def forward(self, x):
        tokens = self.conv(x).flatten(2)  # 1 x 8 x 256
        return tokens.transpose(1, 2) @ tokens  # 1 x 256 x 256: attention-style matmul


def test_macs_are_half_the_flop_counter_and_attention_is_opt_in():
    model = _ConvThenSelfAttention()
    conv_macs = 3 * 8 * 9 * 16 * 16
    assert count_macs(model, 16) == conv_macs
    assert count_macs(model, 16, attention=True) == conv_macs + 256 * 256 * 8


def test_macs_scale_with_resolution_and_count_real_tensors_too():
    """The counter sees the graph that runs: a real model and its meta twin agree, and a fully
    convolutional net costs ~(r1/r2)^2 more at a larger input."""
    spec = get_spec("v1-025")
    torch.manual_seed(0)
    real = build_architecture(spec)
    assert count_macs(real, 96) == count_macs(on_meta(spec), 96)
    ratio = count_macs(real, 192) / count_macs(real, 96)
    assert 3.8 < ratio < 4.05


# --- forward on real tensors ------------------------------------------------------------


def _check_output(spec, out, batch, num_classes):
    assert torch.isfinite(out).all()
    if spec.output == "logits":
        assert out.shape == (batch, num_classes)
    else:
        assert out.shape[0] == batch


@pytest.mark.parametrize("spec", [heavy(s) for s in SPECS])
def test_forward_small_resolution(spec, real_models):
    model = real_models(spec)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    _check_output(spec, out, 2, spec.num_classes)


PUBLISHED = [s for s in SPECS if s.generation in ("v2", "v3")]


@pytest.mark.parametrize("spec", PUBLISHED, ids=[s.name for s in PUBLISHED])
def test_forward_published_resolution(spec, real_models):
    model = real_models(spec)
    with torch.no_grad():
        out = model(torch.randn(1, 3, spec.resolution, spec.resolution))
    _check_output(spec, out, 1, spec.num_classes)


def test_v1_runs_at_any_resolution(real_models):
    model = real_models(get_spec("v1"))
    with torch.no_grad():
        for res in (128, 160, 97):
            assert model(torch.randn(1, 3, res, res)).shape == (1, 1000)


LOGITS = [s for s in SPECS if s.output == "logits"]


@pytest.mark.parametrize("spec", LOGITS, ids=[s.name for s in LOGITS])
def test_num_classes_changes_only_the_classifier(spec):
    model = on_meta(spec, num_classes=10)
    assert model.classifier.out_features == 10
    in_features = model.classifier.in_features
    assert count_params(model) == spec.params - (1000 - 10) * (in_features + 1)


@pytest.mark.parametrize("name", ["v1-025", "v2-035", "v3-small-075", "v3-small-minimal"])
def test_num_classes_forward(name):
    torch.manual_seed(0)
    model = build_architecture(get_spec(name), num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_eval_is_deterministic_and_batch_independent(real_models):
    """Eval mode uses running statistics: an image's logits do not depend on its batch mates."""
    model = real_models(get_spec("v3-small"))
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        together = model(x)
        alone = model(x[1:2])
    torch.testing.assert_close(together[1:2], alone, rtol=1e-4, atol=1e-5)


# --- builders' knobs ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v1", "v2", "v3-large"])
def test_bn_eps_and_dropout_reach_the_layers(name):
    model = build_architecture(get_spec(name), bn_eps=1e-3, dropout=0.5)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-3 for m in norms)
    assert model.dropout.p == 0.5


def test_v3_width_keeps_the_head_like_the_paper():
    """timm/paper: 0.75 keeps the 1280-wide head (torchvision's width_mult narrows it)."""
    large = on_meta(get_spec("v3-large-075"))
    assert large.conv_head.out_channels == 1280 and large.conv_head.in_channels == 720


def test_v3_minimal_has_no_se_and_no_hardswish():
    model = on_meta(get_spec("v3-large-minimal"))
    kinds = {type(m).__name__ for m in model.modules()}
    assert "SqueezeExcite" not in kinds and "Hardswish" not in kinds and "HardSigmoid" not in kinds
    kernels = {m.kernel_size for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert kernels <= {(1, 1), (3, 3)}


def test_v1_has_no_residuals_and_v2_has_them_where_shapes_allow():
    v1 = on_meta(get_spec("v1"))
    assert not any(getattr(m, "has_skip", False) for m in v1.modules())
    v2 = on_meta(get_spec("v2"))
    skips = [m.has_skip for m in v2.blocks.modules() if hasattr(m, "has_skip")]
    assert len(skips) == 17 and sum(skips) == 10  # n - 1 per row: 0+1+2+3+2+2+0


# --- blocks ---------------------------------------------------------------------------------


def test_hardsigmoid_equals_torch_hardsigmoid():
    x = torch.linspace(-8, 8, 10_001)
    torch.testing.assert_close(HardSigmoid()(x), torch.nn.functional.hardsigmoid(x), rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "value,expected",
    [(32, 32), (12, 16), (18, 24), (11.2, 16), (1792, 1792), (88.08, 88), (4, 8), (36, 40), (720, 720)],
)
def test_make_divisible(value, expected):
    assert make_divisible(value) == expected


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_names_and_aliases_resolve(spec):
    for key in (spec.name, *spec.aliases):
        assert get_spec(key) is spec
        assert get_spec(key.upper().replace("_", "-")) is spec


@pytest.mark.parametrize(
    "typo,closest",
    [
        ("v3-smal", "v3-small"),
        ("mobilenet_v2_100x", "v2"),
        ("v1-0.75", "v1-075"),
        ("mobilenetv3_large_1000", "v3-large"),
    ],
)
def test_unknown_name_is_one_line_with_closest_match(typo, closest):
    with pytest.raises(UnknownModelError) as info:
        get_spec(typo)
    message = str(info.value)
    assert "\n" not in message
    assert f"Did you mean {closest!r}?" in message
    assert "v2-035" in message  # lists the known names


def test_unknown_name_far_from_everything_still_lists_known():
    with pytest.raises(UnknownModelError) as info:
        get_spec("resnet50")
    assert "v3-large" in str(info.value) and "\n" not in str(info.value)


# --- against the real timm / torchvision (side venv) -----------------------------------------

from sidecar import SIDE_PYTHON, SKIP_REASON, fp32_tolerance  # noqa: E402

# timm's own constructors for every V1-V3 row; unregistered widths/variants through timm's generators.
TIMM_MODELS = {
    "mobilenet_v1_100": "create_model('mobilenetv1_100')",
    "mobilenet_v1_075": "efficientnet._gen_mobilenet_v1('mobilenetv1_075', 0.75)",
    "mobilenet_v1_050": "efficientnet._gen_mobilenet_v1('mobilenetv1_050', 0.5)",
    "mobilenet_v1_025": "efficientnet._gen_mobilenet_v1('mobilenetv1_025', 0.25)",
    "mobilenet_v2_140": "create_model('mobilenetv2_140')",
    "mobilenet_v2_100": "create_model('mobilenetv2_100')",
    "mobilenet_v2_075": "create_model('mobilenetv2_075')",
    "mobilenet_v2_050": "create_model('mobilenetv2_050')",
    "mobilenet_v2_035": "create_model('mobilenetv2_035')",
    "mobilenet_v3_large_100": "create_model('mobilenetv3_large_100')",
    "mobilenet_v3_large_075": "create_model('mobilenetv3_large_075')",
    "mobilenet_v3_small_100": "create_model('mobilenetv3_small_100')",
    "mobilenet_v3_small_075": "create_model('mobilenetv3_small_075')",
    "mobilenet_v3_large_minimal_100": "mobilenetv3._gen_mobilenet_v3('mobilenetv3_large_minimal_100', 1.0)",
    "mobilenet_v3_small_minimal_100": "mobilenetv3._gen_mobilenet_v3('mobilenetv3_small_minimal_100', 1.0)",
}
TORCHVISION_MODELS = {
    "mobilenet_v2_100": "mobilenet_v2()",
    "mobilenet_v3_large_100": "mobilenet_v3_large()",
    "mobilenet_v3_small_100": "mobilenet_v3_small()",
}
SIDE_RESOLUTION = 128

SIDE_SCRIPT = r"""
import json, sys
import torch
from safetensors.torch import save_file
from timm import create_model
from timm.models import efficientnet, mobilenetv3
from torchvision.models import mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small

out, res = sys.argv[1], int(sys.argv[2])
jobs = json.loads(sys.stdin.read())
for name, lib, expr in jobs:
    torch.manual_seed(0)
    model = eval(expr).eval()
    with torch.no_grad():  # non-trivial BN statistics so that a wrong BN mapping shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1); m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5); m.bias.normal_(0, 0.1)
    x = torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, f"{out}/{lib}-{name}.safetensors", metadata={"order": json.dumps(list(sd))})
    save_file({"input": x, "output": y}, f"{out}/{lib}-{name}.io.safetensors")
"""


# Checked in the default run (when a side python exists): the rows most likely to go wrong
# (narrowest widths, unregistered-in-timm variants, torchvision's eps/head). The rest: -m slow.
SIDE_DEFAULT = {
    ("timm", "mobilenet_v1_025"),
    ("timm", "mobilenet_v2_035"),
    ("timm", "mobilenet_v3_large_075"),
    ("timm", "mobilenet_v3_small_minimal_100"),
    ("tv", "mobilenet_v3_small_100"),
}


def side_params(lib, names):
    return [
        pytest.param(name, id=name, marks=() if (lib, name) in SIDE_DEFAULT else pytest.mark.slow)
        for name in names
    ]


@pytest.fixture(scope="module")
def side_outputs(request, tmp_path_factory):
    """Run the side venv once for every side test selected in this session."""
    if not SIDE_PYTHON:
        pytest.skip(SKIP_REASON)
    exprs = {"timm": TIMM_MODELS, "tv": TORCHVISION_MODELS}
    libs = {
        test_timm_state_dict_loads_by_identity_and_outputs_match.__name__: "timm",
        test_torchvision_state_dict_maps_one_to_one_by_order.__name__: "tv",
    }
    jobs = [
        (
            item.callspec.params["name"],
            libs[item.originalname],
            exprs[libs[item.originalname]][item.callspec.params["name"]],
        )
        for item in request.session.items
        if getattr(item, "originalname", None) in libs
    ]
    out = tmp_path_factory.mktemp("side")
    subprocess.run(
        [SIDE_PYTHON, "-c", SIDE_SCRIPT, str(out), str(SIDE_RESOLUTION)],
        input=json.dumps(jobs),
        text=True,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


def _load_side(path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as fh:
        order = json.loads(fh.metadata()["order"])
    tensors = load_file(str(path))
    return {k: tensors[k] for k in order}


def _assert_same_outputs(model, io_path):
    from safetensors.torch import load_file

    io = load_file(str(io_path))
    with torch.no_grad():
        ours = model.eval()(io["input"])
    diff = (ours - io["output"]).abs().max().item()
    tolerance = fp32_tolerance(io["output"])
    assert diff <= tolerance, f"max abs diff {diff:.3g} > {tolerance:.3g}"


@pytest.mark.sidecar
@pytest.mark.parametrize("name", side_params("timm", TIMM_MODELS))
def test_timm_state_dict_loads_by_identity_and_outputs_match(name, side_outputs):
    theirs = _load_side(side_outputs / f"timm-{name}.safetensors")
    model = build_architecture(get_spec(name))
    ours = model.state_dict()
    assert list(ours) == list(theirs)  # same names, same order
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    model.load_state_dict(theirs, strict=True)
    _assert_same_outputs(model, side_outputs / f"timm-{name}.io.safetensors")


@pytest.mark.sidecar
@pytest.mark.parametrize("name", side_params("tv", TORCHVISION_MODELS))
def test_torchvision_state_dict_maps_one_to_one_by_order(name, side_outputs):
    theirs = _load_side(side_outputs / f"tv-{name}.safetensors")
    spec = get_spec(name)
    model = build_architecture(spec, bn_eps=1e-3 if spec.generation == "v3" else 1e-5)
    ours = model.state_dict()
    assert len(ours) == len(theirs)
    mapped = {}
    for (our_key, our_t), (tv_key, tv_t) in zip(ours.items(), theirs.items()):
        # the only shape difference: the V3 head is a 1x1 conv here, a Linear in torchvision
        assert our_t.numel() == tv_t.numel(), (our_key, tv_key)
        assert our_key.rsplit(".", 1)[1] == tv_key.rsplit(".", 1)[1], (our_key, tv_key)
        mapped[our_key] = tv_t.reshape(our_t.shape)
    model.load_state_dict(mapped, strict=True)
    _assert_same_outputs(model, side_outputs / f"tv-{name}.io.safetensors")
