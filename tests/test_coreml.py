"""Core ML target: every family member converts (fp16, fp32), each compression mode on V2 and
V3, the saved spec carries labels, image input and metadata, the package bytes are
reproducible, and every program runs on the Linux ML Program executor with only supported ops.

Exports go to a session folder and are reused across tests (conversion is the slow part).
Parity compares the executor's output on real photos with the PyTorch model, on weights whose
outputs depend on the image (tests/et_helpers.py: BN-woken well-conditioned weights; untrained
random weights give the same logits for every image and passed with the wrong colour order,
issue 21). The floors are checked to reject an R/B swap and a dropped 1/std fold."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil

import numpy as np
import pytest

from mobile_export.coreml import compress as cq
from mobile_export.coreml.target import (
    LABEL_NAME,
    PROBS_NAME,
    CoreMLTarget,
    load_spec,
    op_types,
    pitfalls,
    softmax_input,
)
from mobile_export.errors import ArtifactError, UsageError
from mobile_export.models import BuiltModel, all_specs, create_model, get_spec
from mobile_export.targets import ExportOptions

torch = pytest.importorskip("torch")
pytest.importorskip("coremltools")

RES = 64  # small input: conversion cost is in the weights, parity needs only a few pixels
TARGET = CoreMLTarget()

# Default suite (about 16 conversions): V2 in fp16 and fp32, V3 and V4 in fp16, every compression
# mode on V2 and V3, the 4-bit size bound on the full-width V2. Behind -m slow: every member in
# both precisions (V1, V4 hybrids with attention ops, V5) and full-width V2/V3 compression.
V2, V3 = "mobilenet_v2_035", "mobilenet_v3_small_100"  # the compression and option tests
FAST = {(V2, "fp16"), (V2, "fp32"), (V3, "fp16"), ("mobilenet_v4_conv_small", "fp16")}
LABELS = tuple(f"label {i}" for i in range(1000))  # every export is a classifier with these
# SQNR floors (dB) of the executor's logits vs PyTorch on 3 real photos, BN-woken weights
# (et_helpers), 2026-12-02, V2 0.35 at 64 px: correct file / R/B swapped (BGR declared) / 1/std
# fold undone (docs/thresholds.md):
#   fp32 106.0 / 2.4 / 0.0   fp16 42.0 / 2.4 / 0.0   int8 20.1 / 2.0 / 0.0 (V3-Small: 11.7 / -15.4 / -0.1)
#   palettize6 7.5 / 1.7 / 0.0   palettize4 6.1 / 1.6 / 0.0   w8a8 17.0 / 2.2 / 0.0
# (these synthetic weights are harder on palettes than trained ones). Each floor sits between the
# correct file and the R/B swap; test_floors_reject_colour_and_normalisation_bugs proves it.
# The old floors (45 / 20 dB ...) were measured on random weights whose outputs ignore the image.
# Members whose BN-woken synthetic weights lose more in fp16 than the 30 dB floor (measured with
# -m slow on 2026-12-02, 3 photos, 64 px). Their floor is that measurement minus 3 dB, so a
# regression still fails; on trained weights fp16 gives 54-62 dB (docs/matrix_trained.md).
SYNTHETIC_FP16_DB = {
    "mobilenet_v3_large_100": 27.0,
    "mobilenet_v4_hybrid_medium": 15.8,
    "mobilenet_v4_hybrid_large": 13.3,
}
FLOORS = {
    ("fp32", "none"): 90.0,
    ("fp16", "none"): 30.0,
    ("fp16", "int8"): 8.0,
    ("fp16", "w8a8"): 10.0,
    ("fp16", "palettize6"): 5.0,
    ("fp16", "palettize4"): 4.0,
}


@pytest.fixture(scope="session")
def photos():
    from mobile_export.preprocess import bundled_photos

    paths = bundled_photos()
    if not paths:
        pytest.skip("no bundled photos (scikit-image) to compare on")
    return paths[:3]


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """export(name, res=RES, labels=LABELS, **options) -> (package, manifest fields, built); cached."""
    root = tmp_path_factory.mktemp("coreml")
    cache: dict = {}
    folders = itertools.count()

    def export(name: str, res: int = RES, labels: tuple | None = LABELS, built=None, **options):
        key = (name, res, labels, id(built), tuple(sorted(options.items())))
        if key not in cache:
            if built is None:
                from et_helpers import write_weights

                weights = write_weights(name, res, root)
            if built is None and get_spec(name).output == "features":
                labels = None  # a feature encoder (V5-300m) has no classifier to label
            model = built or create_model(
                name, weights=str(weights), seed=0, resolution=res, labels=list(labels) if labels else None
            )
            opts = ExportOptions(**options)
            TARGET.validate(model, opts)
            dest = root / f"{next(folders)}" / TARGET.artifact_name(model, opts)
            dest.parent.mkdir(parents=True)
            fields = TARGET.export(model, opts, dest, lambda _msg: None)
            cache[key] = (dest, fields, model)
        return cache[key]

    return export


@pytest.fixture(scope="session")
def trained():
    """V3-Small and V2 trained on the photo task (tests/fixtures/trained/) for the compression tests:
    BN-woken synthetic V3-Small weights are chaotic under weight compression (palettize6
    -1.4 dB, palettize4 -5.5 dB, int8 11.7 dB against PyTorch), a trained one is not."""
    import sys

    from mutation_helpers import ROOT, TRAINED

    sys.path.insert(0, str(ROOT / "scripts"))
    import train_small

    found = {}
    for name in (V3, "mobilenet_v2_100", "mobilenet_v1_050", "mobilenet_v4_conv_small"):
        model, meta, pre = train_small.load_checkpoint(TRAINED / f"{name}_photos_64.safetensors")
        found[name] = train_small.as_built(model, meta, pre, "trained fixture")
    return found


def reference_and_artifact(built, package, fields, photos):
    """(PyTorch logits, artifact outputs) on the photos, each N x classes."""
    from mobile_export.preprocess import load_input

    normalized_inside = fields["input"]["normalized_in_model"]
    raw = [load_input(p, built.preprocess, normalized=False) for p in photos]
    ref_in = [load_input(p, built.preprocess, normalized=True) for p in photos]
    with torch.no_grad():
        ref = np.concatenate([built.module(torch.from_numpy(x)).numpy().reshape(1, -1) for x in ref_in])
    got = np.concatenate(TARGET.run(package, fields, raw if normalized_inside else ref_in))
    return ref, got


def sqnr(ref, got) -> float:
    from mobile_export.verify.metrics import sqnr_db

    return sqnr_db(ref, got)


def supported_ops() -> frozenset:
    from mobile_export.coreml import mil

    return mil.SUPPORTED_OPS


def members():
    for spec in all_specs():
        for precision in ("fp16", "fp32"):
            marks = [] if (spec.name, precision) in FAST else [pytest.mark.slow]
            yield pytest.param(spec.name, precision, marks=marks, id=f"{spec.name}-{precision}")


# --- every member, fp16 and fp32 -------------------------------------------------------


@pytest.mark.parametrize("name, precision", list(members()))
def test_member_converts_and_matches_pytorch(exports, photos, name, precision):
    package, fields, built = exports(name, precision=precision)
    TARGET.check_file(package)
    spec = load_spec(package)
    ops = set(op_types(spec))
    assert ops <= supported_ops(), f"ops the executor lacks: {sorted(ops - supported_ops())}"
    assert set(fields["coreml"]["ops"]) == ops
    assert ("cast" in ops) == (precision == "fp16")
    assert pitfalls(spec) == []
    ref, got = reference_and_artifact(built, package, fields, photos)
    assert got.shape == ref.shape
    floor = FLOORS[(precision, "none")]
    if precision == "fp16" and name in SYNTHETIC_FP16_DB:
        floor = SYNTHETIC_FP16_DB[name] - 3.0
    assert sqnr(ref, got) >= floor
    assert fields["coreml"]["files"]["Data/com.apple.CoreML/weights/weight.bin"] > 0


# --- compression -----------------------------------------------------------------------

COMPRESSED_OPS = {
    "int8": {"constexpr_affine_dequantize"},
    "palettize6": {"constexpr_lut_to_dense"},
    "palettize4": {"constexpr_lut_to_dense"},
    "w8a8": {"constexpr_affine_dequantize", "quantize", "dequantize"},
}
DEFAULT_IOS = {"int8": "iOS16", "palettize6": "iOS18", "palettize4": "iOS18", "w8a8": "iOS17"}


@pytest.mark.parametrize("mode", list(COMPRESSED_OPS))
@pytest.mark.parametrize(
    "name",
    [
        V2,
        V3,
        # trained checkpoints of the other generations (synthetic V3-Large measured int8 2.9,
        # palettize6 -5.4, palettize4 -11.3, w8a8 5.4 dB: chaotic weights, not the converter)
        pytest.param("mobilenet_v2_100", marks=pytest.mark.slow),
        pytest.param("mobilenet_v1_050", marks=pytest.mark.slow),
        pytest.param("mobilenet_v4_conv_small", marks=pytest.mark.slow),
    ],
)
def test_compression_modes(exports, trained, photos, name, mode):
    package, fields, built = exports(name, compress=mode, built=trained.get(name))
    spec = load_spec(package)
    ops = set(op_types(spec))
    assert COMPRESSED_OPS[mode] <= ops
    assert ops <= supported_ops()
    assert fields["coreml"]["deployment_target"] == DEFAULT_IOS[mode]
    assert fields["quantization"]["mode"] == mode
    assert "common::int_op_canonicalization" in fields["quantization"]["guarded_passes_removed"]
    ref, got = reference_and_artifact(built, package, fields, photos)
    assert sqnr(ref, got) >= FLOORS[("fp16", mode)]
    float_package, _, _ = exports(name, built=trained.get(name))
    weights = lambda p: (p / "Data/com.apple.CoreML/weights/weight.bin").stat().st_size  # noqa: E731
    assert weights(package) < weights(float_package)


def test_w8a8_keeps_the_activation_ranges_that_measure_closest_to_float(exports, trained):
    """Both range methods are fitted on one half of the calibration images and measured on the
    other (both ways); the manifest records both, the better one is kept, and the shipped
    file's activation scales are that method's ranges over all calibration images."""
    from mobile_export.coreml import mil
    from mobile_export.coreml import target as coreml_target

    built = trained[V3]
    package, fields, _ = exports(V3, compress="w8a8", built=built)
    record = fields["quantization"]["calibration"]
    measured = record["ranges_logits_sqnr_db"]
    assert set(measured) == set(mil.RANGE_METHODS)
    assert measured[record["activation_ranges"]] == max(measured.values())
    assert min(measured.values()) > 12.0  # a trained model: both are real quantizations, not noise
    assert record["ranges_folds"] == 2

    float_package, _, _ = exports(V3, built=built, deployment_target="17")
    options = ExportOptions(compress="w8a8")
    plan = coreml_target._Plan(built, options)
    _, samples = coreml_target._calibration_samples(built, options, plan, lambda _m: None)
    candidates = mil.candidate_ranges(mil.load_program(float_package), samples)
    program = mil.load_program(package)
    scales = {
        op.inputs["input"][0]: float(program.consts[op.inputs["scale"][0]])
        for op in program.compute_ops()
        if op.type == "quantize" and op.inputs["input"][0] in candidates["minmax"]
    }

    def matching(ranges):
        return sum(
            scale == pytest.approx(max(-ranges[n]["rmin"], ranges[n]["rmax"]) / 127, rel=2e-3)
            for n, scale in scales.items()
        )

    kept, other = (candidates[m] for m in sorted(candidates, key=lambda m: m != record["activation_ranges"]))
    assert len(scales) > 10
    assert matching(kept) >= 0.8 * len(scales) > matching(other)


def test_w8a8_keep_fp16_leaves_the_costliest_activations_fp16(exports, trained, photos):
    """--keep-fp16 auto: the tensors whose int8 rounding costs most on the calibration images
    lose their quantize/dequantize pairs, no others do, and the shipped file computes what the
    choice measured (the plain W8A8 file run with those pairs passed through)."""
    from mobile_export.coreml import mil

    built = trained[V3]
    plain, _, _ = exports(V3, compress="w8a8", built=built)
    package, fields, _ = exports(V3, compress="w8a8", built=built, fp16_activations=10.0)
    record = fields["quantization"]["fp16_activations"]
    before, after = mil.load_program(plain), mil.load_program(package)
    quantized = before.quantized_values()
    chosen = record["fp16_tensors"]
    assert record["quantized_tensors"] == len(quantized) > 20
    assert 0 < len(chosen) <= len(quantized) // 10
    assert after.quantized_values() == [n for n in quantized if n not in chosen]
    gains = record["gains_db"]
    assert min(gains[n] for n in chosen) >= max(g for n, g in gains.items() if n not in chosen)
    measured = record["calibration_logits_sqnr_db"]
    assert measured["chosen"] > measured["all_int8"] + 0.5, measured

    from PIL import Image

    images = [np.asarray(Image.open(p).convert("RGB").resize((built.resolution,) * 2)) for p in photos]
    name = after.inputs[0].name
    with before.float_values(chosen):
        simulated = [before.output_vector(before.run({name: x})) for x in images]
    shipped = [after.output_vector(after.run({name: x})) for x in images]
    assert sqnr(np.stack(simulated), np.stack(shipped)) > 60.0


@pytest.mark.parametrize("bug", ["rb_swap", "no_std"])
@pytest.mark.parametrize("precision, mode", list(FLOORS))
def test_floors_reject_colour_and_normalisation_bugs(exports, photos, tmp_path, precision, mode, bug):
    """Each floor above must fail a file that reads B for R or forgot 1/std (issue 21: on
    random weights every such file passed)."""
    import mutation_helpers as mh

    options = {"precision": precision} if mode == "none" else {"compress": mode}
    package, fields, built = exports(V2, **options)
    broken = tmp_path / package.name
    shutil.copytree(package, broken)
    mh.edit_coreml_input(broken, bug, built.preprocess.mean, built.preprocess.std)
    ref, good = reference_and_artifact(built, package, fields, photos)
    _, bad = reference_and_artifact(built, broken, fields, photos)
    assert sqnr(ref, good) >= FLOORS[(precision, mode)] > sqnr(ref, bad)


def test_palettize4_is_at_most_015_of_fp32_on_v2(exports):
    """Full-width V2 (at width 0.35 the program text and the small uncompressed weights are a
    larger share: 0.151 measured)."""
    from mobile_export.fsutil import size_bytes

    fp32, _, _ = exports("mobilenet_v2_100", precision="fp32")
    pal4, _, _ = exports("mobilenet_v2_100", compress="palettize4")
    ratio = size_bytes(pal4) / size_bytes(fp32)
    assert ratio <= 0.15, f"4-bit package is {ratio:.3f} of fp32"


@pytest.mark.slow
def test_int8_on_ios18_uses_blockwise_op(exports):
    package, fields, _ = exports(V2, compress="int8", deployment_target="18")
    assert "constexpr_blockwise_shift_scale" in op_types(load_spec(package))
    assert fields["coreml"]["opset"] == "CoreML8"


def test_unsafe_pass_is_out_of_every_pipeline():
    assert "common::int_op_canonicalization" not in cq.guarded_pipeline().passes
    assert "common::int_op_canonicalization" not in cq.guarded_pipeline(drop_fp16_cast=True).passes
    assert "common::add_fp16_cast" not in cq.guarded_pipeline(drop_fp16_cast=True).passes


def test_kmeans_palette_beats_uniform_and_is_deterministic():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 64, 3, 3)).astype(np.float16)
    lut_fn = cq.kmeans_lut(4)
    lut, idx = lut_fn(w)
    assert lut.shape == (16,) and lut.dtype == np.float16 and idx.dtype == np.uint8 and idx.max() < 16
    err = np.abs(lut[idx].astype(np.float32) - w.reshape(-1)).mean()
    uniform = np.linspace(w.min(), w.max(), 16).astype(np.float32)
    err_uniform = np.abs(uniform[np.abs(w.reshape(-1, 1) - uniform).argmin(1)] - w.reshape(-1)).mean()
    assert err < 0.8 * err_uniform
    lut2, idx2 = lut_fn(w)
    assert np.array_equal(lut, lut2) and np.array_equal(idx, idx2)
    few = np.array([1.0, 2.0, 2.0], np.float16)  # fewer values than entries: exact
    lut3, idx3 = lut_fn(few)
    assert np.array_equal(lut3[idx3], few)


def test_palette_group_divides_channels():
    assert cq.palette_group_size(1000) == 8
    assert cq.palette_group_size(24) == 8
    assert cq.palette_group_size(960) == 16
    assert cq.palette_group_size(7) == 1


# --- options and refusals --------------------------------------------------------------


@pytest.mark.parametrize(
    "options, words",
    [
        (dict(compress="palettize4", deployment_target="17"), ["--ios 18", "int8"]),
        (dict(compress="w8a8", deployment_target="16"), ["--ios 17"]),
        (dict(precision="int4"), ["fp16", "fp32"]),
        (dict(input_kind="image", normalize_in_model=False), ["--input tensor"]),
        (dict(deployment_target="15"), ["16", "17", "18"]),
    ],
)
def test_impossible_combinations_are_refused(options, words):
    spec = get_spec("v2")
    built = BuiltModel(module=None, spec=spec, preprocess=spec.preprocess, num_classes=1000, resolution=RES)
    with pytest.raises(UsageError) as err:
        TARGET.validate(built, ExportOptions(**options))
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_default_deployment_targets_fit_the_compression():
    assert cq.deployment_target("none", None) == 16
    assert cq.deployment_target("palettize4", None) == 18
    assert cq.deployment_target("w8a8", None) == 17
    assert cq.deployment_target("int8", "18") == 18


def test_variant_tags_are_distinct():
    tags = {
        TARGET.variant_tag(ExportOptions(precision=p, compress=c, input_kind=i, classifier=k))
        for p in ("fp16", "fp32")
        for c in cq.MODES
        for i in ("image", "tensor")
        for k in (True, False)
    }
    assert len(tags) == 2 * len(cq.MODES) * 2 * 2
    assert TARGET.variant_tag(ExportOptions(compress="palettize4")) == "fp16_pal4"


# --- the saved spec --------------------------------------------------------------------


def test_labels_image_input_and_metadata_in_the_saved_spec(exports):
    labels = LABELS
    package, fields, built = exports(V2)
    spec = load_spec(package)
    desc = spec.description
    assert desc.input[0].name == "image"
    image = desc.input[0].type.imageType
    assert desc.input[0].type.WhichOneof("Type") == "imageType"
    assert (image.width, image.height) == (RES, RES)
    assert image.colorSpace == spec.description.input[0].type.imageType.RGB
    assert desc.predictedFeatureName == LABEL_NAME and desc.predictedProbabilitiesName == PROBS_NAME
    from mobile_export.coreml.target import _labels

    assert _labels(spec) == list(labels)
    meta = desc.metadata
    assert meta.author == "mobile-export" and meta.license and meta.versionString
    assert "MobileNetV2" in meta.shortDescription
    assert desc.input[0].shortDescription and all(o.shortDescription for o in desc.output)
    user = dict(meta.userDefined)
    assert json.loads(user["mobile_export.model"])["name"] == V2
    assert json.loads(user["mobile_export.preprocess"])["mean"] == list(built.preprocess.mean)
    assert user["mobile_export.precision"] == "fp16" and user["mobile_export.compression"] == "none"
    assert "com.github.apple.coremltools.conversion_date" not in user
    assert fields["output"]["kind"] == "classifier" and fields["input"]["kind"] == "image"
    # the probabilities are the softmax of the executor's logits
    from mobile_export.coreml import mil

    x = np.full((1, 3, RES, RES), 128.0, np.float32)
    result = mil.load_program(package).run({"image": x}, capture={softmax_input(spec)})
    logits = result[softmax_input(spec)].astype(np.float64).reshape(-1)
    probs = np.array([result[PROBS_NAME][label] for label in labels])
    expected = np.exp(logits - logits.max())
    np.testing.assert_allclose(probs, expected / expected.sum(), atol=2e-3)


def test_tensor_input_and_raw_logits(exports, photos):
    package, fields, built = exports(V3, precision="fp32", input_kind="tensor", classifier=False)
    spec = load_spec(package)
    assert spec.description.input[0].type.WhichOneof("Type") == "multiArrayType"
    assert [o.name for o in spec.description.output] == ["logits"]
    assert "softmax" not in op_types(spec) and "classify" not in op_types(spec)
    assert fields["input"] == {
        **fields["input"],
        "dtype": "float32",
        "value_range": [0.0, 1.0],
        "normalized_in_model": True,
    }
    ref, got = reference_and_artifact(built, package, fields, photos)
    assert sqnr(ref, got) >= FLOORS[("fp32", "none")]


@pytest.mark.slow
def test_normalization_left_to_the_app(exports, photos):
    package, fields, built = exports(V2, precision="fp32", input_kind="tensor", normalize_in_model=False)
    assert fields["input"]["normalized_in_model"] is False
    assert fields["coreml"]["std_folded_into_first_conv"] is False
    ref, got = reference_and_artifact(built, package, fields, photos)
    assert sqnr(ref, got) >= FLOORS[("fp32", "none")]


def test_normalization_fold_is_exact_and_falls_back_when_the_input_is_reused(exports, photos):
    """The stem conv absorbs 1/std; a model that also reads the raw input elsewhere keeps an
    explicit multiply instead, and both match PyTorch in fp32."""
    from torch import nn

    class ReusesInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(11, 5)

        def forward(self, x):
            feats = torch.cat([self.pool(self.stem(x)), self.pool(x)], 1).flatten(1)
            return self.head(feats)

    spec = get_spec("v2")
    torch.manual_seed(0)
    built = BuiltModel(
        module=ReusesInput().eval(),
        spec=spec,
        preprocess=spec.preprocess.at_resolution(RES),
        num_classes=5,
        resolution=RES,
        weights={"source": "random"},
    )
    package, fields, _ = exports("reuses-input", built=built, precision="fp32")
    assert fields["coreml"]["std_folded_into_first_conv"] is False
    ref, got = reference_and_artifact(built, package, fields, photos)
    assert sqnr(ref, got) >= FLOORS[("fp32", "none")]
    package, fields, built = exports(V2, precision="fp32")
    assert fields["coreml"]["std_folded_into_first_conv"] is True


def test_tanh_gelu_stays_tanh_gelu(exports, photos):
    """coremltools 9.0 drops aten.gelu's keyword `approximate` on the torch.export path and emits
    erf GELU (V5 fp32 came out at 60-64 dB); converter_fixes keeps it. The file must follow the
    tanh model (fp32 floor) and not the erf one: the two differ by ~74 dB per op, under the floor."""
    import copy

    from torch import nn

    class TanhGelu(nn.Module):
        def __init__(self, approximate: str):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.act = nn.GELU(approximate=approximate)
            self.mix = nn.ModuleList(nn.Conv2d(16, 16, 1) for _ in range(4))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(16, 5, bias=False)
            with torch.no_grad():  # pre-activations of order 1-3, where erf and tanh GELU part most
                for conv in self.mix:
                    conv.weight.mul_(4.0)

        def forward(self, x):
            x = self.act(self.stem(x))
            for conv in self.mix:
                x = self.act(conv(x))
            return self.head(self.pool(x).flatten(1))

    spec = get_spec("v5-base")
    torch.manual_seed(0)
    tanh_model = TanhGelu("tanh").eval()
    erf_model = copy.deepcopy(tanh_model)
    erf_model.act = nn.GELU()

    def as_built(module):
        return BuiltModel(
            module=module,
            spec=spec,
            preprocess=spec.preprocess.at_resolution(RES),
            num_classes=5,
            resolution=RES,
            weights={"source": "random"},
        )

    package, fields, built = exports("tanh-gelu", built=as_built(tanh_model), precision="fp32")
    ref, got = reference_and_artifact(built, package, fields, photos)
    erf_ref, _ = reference_and_artifact(as_built(erf_model), package, fields, photos)
    assert sqnr(ref, got) >= FLOORS[("fp32", "none")]
    assert sqnr(erf_ref, got) < FLOORS[("fp32", "none")] - 10  # it can tell the two apart


def test_features_model_has_a_plain_tensor_output(exports, photos):
    from torch import nn

    spec = dataclasses.replace(get_spec("v2"), output="features")
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU6(), nn.Conv2d(16, 32, 1)
    )
    built = BuiltModel(
        module=body.eval(),
        spec=spec,
        preprocess=spec.preprocess.at_resolution(RES),
        num_classes=1000,
        resolution=RES,
        weights={"source": "random"},
    )
    package, fields, _ = exports("features", built=built, precision="fp32")
    spec_pb = load_spec(package)
    assert [o.name for o in spec_pb.description.output] == ["features"]
    assert "classify" not in op_types(spec_pb)
    assert fields["output"]["kind"] == "features" and TARGET.output_quantity(fields) == "features"
    ref, got = reference_and_artifact(built, package, fields, photos)
    assert sqnr(ref, got) >= FLOORS[("fp32", "none")]


# --- MobileNetV3 fp16 pitfalls ---------------------------------------------------------


@pytest.mark.parametrize("name", [V3, pytest.param("mobilenet_v3_large_100", marks=pytest.mark.slow)])
def test_v3_fp16_graph_avoids_known_pitfalls(exports, name):
    package, _, _ = exports(name)
    spec = load_spec(package)
    ops = op_types(spec)
    assert "batch_norm" not in ops  # folded into the convolutions
    assert pitfalls(spec) == []


def test_pitfall_check_has_teeth(exports):
    """A Linear + hardswish head (torchvision's V3 form) is flagged and refused."""
    from torch import nn

    from mobile_export.errors import ExportError

    spec = get_spec("v3")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(8, 16),
        nn.Hardswish(),
        nn.Linear(16, 4),
    )
    built = BuiltModel(
        module=model.eval(),
        spec=spec,
        preprocess=spec.preprocess.at_resolution(RES),
        num_classes=4,
        resolution=RES,
        weights={"source": "random"},
    )
    with pytest.raises(ExportError, match="pitfall"):
        exports("linear-hardswish", built=built)


# --- reproducibility and damaged files -------------------------------------------------


def test_same_command_same_bytes(exports, tmp_path):
    first, _, built = exports(V2, compress="palettize4")
    opts = ExportOptions(compress="palettize4")
    again = tmp_path / first.name
    TARGET.export(built, opts, again, lambda _m: None)
    import difflib

    first_text, again_text = str(load_spec(first)).splitlines(), str(load_spec(again)).splitlines()
    assert first_text == again_text, "\n".join(
        list(difflib.unified_diff(first_text, again_text, lineterm="", n=1))[:20]
    )
    for rel in (
        "Data/com.apple.CoreML/model.mlmodel",
        "Data/com.apple.CoreML/weights/weight.bin",
        "Manifest.json",
    ):
        assert (first / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert sorted(p.relative_to(first) for p in first.rglob("*")) == sorted(
        p.relative_to(again) for p in again.rglob("*")
    )


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda p: (p / "Data/com.apple.CoreML/weights/weight.bin").unlink(), "weight.bin is missing"),
        (lambda p: (p / "Manifest.json").unlink(), "Manifest.json is missing"),
        (
            lambda p: (p / "Data/com.apple.CoreML/model.mlmodel").write_bytes(b"\x0a\xff\xff\xff"),
            "does not parse",
        ),
        (lambda p: (p / "Manifest.json").write_text("{"), "not valid JSON"),
    ],
)
def test_check_file_names_the_damage(exports, tmp_path, damage, words):
    package, _, _ = exports(V2)
    copy = tmp_path / package.name
    shutil.copytree(package, copy)
    TARGET.check_file(copy)
    damage(copy)
    with pytest.raises(ArtifactError, match=words) as err:
        TARGET.check_file(copy)
    assert "\n" not in str(err.value)


def test_export_prints_nothing(capfd, tmp_path):
    """coremltools and torch.export print progress bars and warnings; the library must not."""
    from torch import nn

    spec = get_spec("v2")
    built = BuiltModel(
        module=nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)).eval(),
        spec=spec,
        preprocess=spec.preprocess.at_resolution(RES),
        num_classes=4,
        resolution=RES,
        weights={"source": "random"},
    )
    capfd.readouterr()
    TARGET.export(built, ExportOptions(compress="int8"), tmp_path / "quiet.mlpackage", lambda _m: None)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
