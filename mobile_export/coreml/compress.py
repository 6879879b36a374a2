"""Core ML compression as data: each `--compress` mode is one record (the iOS it needs, the
coremltools.optimize.coreml config it uses), and `compress()` applies it to a converted model.

Why the passes are run here instead of through `linear_quantize_weights()` & co.: those helpers
re-serialize the program through coremltools' default pass pipeline, which contains
`common::int_op_canonicalization`. That pass rewrites `dequantize -> reshape -> quantize` into a
reshape of the int8 tensor without checking that the two scales agree, so W8A8 models lose
accuracy silently. We apply the same registered compression passes to the program and serialize
once with that pass removed (`guarded_pipeline`).

Never enabled: palettization with `enable_per_channel_scale` (coremltools PR #2777: it can
corrupt a weight it skips). Activation ranges come from ALL calibration images (the shipped
calibration keeps only the last batch, #2704): the caller computes them by running the saved
program through the Linux ML Program executor (mil.calibration; the target measures which
range method to use) and passes them in."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ExportError, UsageError

#: Passes removed from every pipeline we run: see the module docstring.
UNSAFE_PASSES = ("common::int_op_canonicalization",)

#: Weights with fewer elements stay in the compute precision (biases, small depthwise kernels):
#: compressing them saves bytes that do not matter and costs accuracy that does.
WEIGHT_THRESHOLD = 2048

#: Output channels that share one palette (LUT), largest first; a layer takes the largest that
#: divides its channel count, so 1000-class heads and 24-channel layers are not skipped.
PALETTE_GROUPS = (16, 8, 4, 2, 1)

IOS_VERSIONS = (16, 17, 18)


@dataclass(frozen=True)
class CompressionMode:
    name: str  # the --compress value
    tag: str  # file-name tag: mobilenet_v2_100_fp16_pal4.mlpackage
    min_ios: int  # lowest deployment target whose opset has the ops this mode produces
    weights: str  # for the manifest and the model description
    activations: str | None = None
    nbits: int | None = None  # palettization
    needs_calibration: bool = False  # activation ranges (W8A8)
    data_aware: bool = False  # palette sizes per layer from measured sensitivity (calibration images)
    why_min_ios: str = ""

    @property
    def changes_only_weights(self) -> bool:
        """Compressed weights, float activations: PyTorch with the stored weights is exact."""
        return self.name != "none" and self.activations is None

    @property
    def palettizes(self) -> bool:
        return self.nbits is not None or self.data_aware


MODES: dict[str, CompressionMode] = {
    m.name: m
    for m in (
        CompressionMode("none", "", 16, "float, the compute precision"),
        CompressionMode(
            "int8",
            "int8",
            16,
            "int8 linear symmetric, one scale per output channel",
            why_min_ios="constexpr_affine_dequantize is in the iOS16 opset",
        ),
        CompressionMode(
            "palettize6",
            "pal6",
            18,
            "6-bit palette (1-D k-means) per group of output channels",
            nbits=6,
            why_min_ios="grouped-channel palettes (constexpr_lut_to_dense v2) need iOS18",
        ),
        CompressionMode(
            "palettize4",
            "pal4",
            18,
            "4-bit palette (1-D k-means) per group of output channels",
            nbits=4,
            why_min_ios="grouped-channel palettes (constexpr_lut_to_dense v2) need iOS18",
        ),
        CompressionMode(
            "palettize-auto",
            "palauto",
            18,
            "2-8-bit palettes per group of output channels; bits per layer from measured sensitivity "
            "on the calibration images under a size budget",
            data_aware=True,
            why_min_ios="grouped-channel palettes (constexpr_lut_to_dense v2) need iOS18",
        ),
        CompressionMode(
            "w8a8",
            "w8a8",
            17,
            "int8 linear symmetric, one scale per output channel",
            activations="int8 linear symmetric, one scale per tensor from the calibration images "
            "(clipped at the least squared error or min/max, whichever measured closer to float)",
            needs_calibration=True,
            why_min_ios="activation quantize/dequantize need iOS17",
        ),
    )
}


def get_mode(name: str) -> CompressionMode:
    if name not in MODES:
        raise UsageError(f"unknown Core ML compression {name!r}; choose one of: {', '.join(MODES)}")
    return MODES[name]


def deployment_target(mode_name: str, requested: str | int | None) -> int:
    """The iOS version to target: the lowest that fits the compression, or the requested one
    when it can hold the ops (UsageError listing what works otherwise)."""
    mode = get_mode(mode_name)
    if requested is None:
        return mode.min_ios
    try:
        ios = int(requested)
    except (TypeError, ValueError):
        raise UsageError(
            f"--ios {requested!r} is not a version; choose one of: {', '.join(map(str, IOS_VERSIONS))}"
        ) from None
    if ios not in IOS_VERSIONS:
        raise UsageError(f"--ios {ios} is not supported; choose one of: {', '.join(map(str, IOS_VERSIONS))}")
    if ios < mode.min_ios:
        fits = [m.name for m in MODES.values() if m.min_ios <= ios]
        raise UsageError(
            f"--compress {mode.name} needs --ios {mode.min_ios} or later ({mode.why_min_ios}); "
            f"use --ios {mode.min_ios}, or with --ios {ios} use --compress {'|'.join(fits)}"
        )
    return ios


def ct_target(ios: int):
    import coremltools as ct

    return {16: ct.target.iOS16, 17: ct.target.iOS17, 18: ct.target.iOS18}[ios]


def guarded_pipeline(drop_fp16_cast: bool = False):
    """coremltools' default pipeline without the passes in UNSAFE_PASSES. `drop_fp16_cast`
    when re-serializing an already converted program (as coremltools itself does then)."""
    import coremltools as ct

    pipeline = ct.PassPipeline.DEFAULT
    removed = set(UNSAFE_PASSES)
    if drop_fp16_cast:
        removed |= {"common::add_fp16_cast", "common::add_int16_cast"}
    pipeline.remove_passes(removed)
    return pipeline


def palette_group_size(channels: int) -> int:
    return next(g for g in PALETTE_GROUPS if channels % g == 0)


# Only the weights of these ops are compressed: a norm's per-channel gain or a fixed upsampling
# kernel of 2048+ elements is a const too (MobileNetV5), and one int8 scale or one palette for
# a whole gain vector changed the outputs of V5 files (measured 45.9 dB against PyTorch with the
# file's own conv weights, fp32 compute; 112-117 dB for V1-V4, which have no such consts).
COMPRESSED_OPS = ("conv", "linear")


def palettized_weights(mlmodel) -> dict[str, tuple[int, ...]]:
    """The weights palettization compresses (name -> shape): conv/linear weights of
    WEIGHT_THRESHOLD elements or more."""
    import coremltools.optimize.coreml as cto

    return {
        name: tuple(meta.val.shape)
        for name, meta in cto.get_weights_metadata(mlmodel, weight_threshold=WEIGHT_THRESHOLD).items()
        if meta.child_ops and all(child.op_type in COMPRESSED_OPS for child in meta.child_ops)
    }


def _weight_config(mlmodel, mode: CompressionMode, bits: dict[str, int] | None = None):
    """OptimizationConfig for the weights: per-layer palette groups (and, data-aware, per-layer
    palette sizes from `bits`) for palettization."""
    import coremltools.optimize.coreml as cto

    if not mode.palettizes:
        int8 = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric",
            dtype="int8",
            granularity="per_channel",
            weight_threshold=WEIGHT_THRESHOLD,
        )
        return cto.OptimizationConfig(op_type_configs={op: int8 for op in COMPRESSED_OPS})
    if mode.data_aware and not bits:
        raise ExportError(
            f"{mode.name} needs palette sizes from the sensitivity pass; none were computed (internal error)"
        )
    per_weight = {}
    luts = {}
    for name, shape in palettized_weights(mlmodel).items():
        nbits = bits[name] if mode.data_aware else mode.nbits
        lut_function = luts.setdefault(nbits, kmeans_lut(nbits))
        per_weight[name] = cto.OpPalettizerConfig(
            mode="custom",
            lut_function=lut_function,
            granularity="per_grouped_channel",
            group_size=palette_group_size(shape[0]),
            channel_axis=0,
            enable_per_channel_scale=False,
            weight_threshold=WEIGHT_THRESHOLD,
        )
    return cto.OptimizationConfig(op_name_configs=per_weight)


def kmeans_lut(nbits: int, max_iterations: int = 100):
    """Palette of 2**nbits entries for one group of weights by 1-D k-means (Lloyd), used as
    coremltools' `lut_function`.

    Why not coremltools' "kmeans" mode: it fits scikit-learn's KMeans once per channel group
    (~0.2 s of overhead each), which is minutes for one MobileNet. In 1-D, k-means is cheap
    on the distinct values weighted by their counts (fp16 weights have few): centers start at
    the weighted quantiles (deterministic, no random init) and each step assigns values to the
    nearest center by the midpoints between sorted centers."""
    import numpy as np

    k = 1 << nbits

    def lut_function(weights):
        values, inverse, counts = np.unique(weights.reshape(-1), return_inverse=True, return_counts=True)
        v, w = values.astype(np.float64), counts.astype(np.float64)
        if len(v) <= k:
            centers, assign = np.concatenate([v, np.full(k - len(v), v[-1])]), np.arange(len(v))
        else:
            cumulative = (np.cumsum(w) - 0.5 * w) / w.sum()
            centers = np.interp((np.arange(k) + 0.5) / k, cumulative, v)
            for _ in range(max_iterations):
                assign = np.searchsorted((centers[1:] + centers[:-1]) / 2, v)
                mass = np.bincount(assign, weights=w, minlength=k)
                moved = np.where(
                    mass > 0,
                    np.bincount(assign, weights=w * v, minlength=k) / np.maximum(mass, 1e-300),
                    centers,
                )
                moved.sort()
                if np.array_equal(moved, centers):
                    break
                centers = moved
            assign = np.searchsorted((centers[1:] + centers[:-1]) / 2, v)
        return centers.astype(weights.dtype), assign[inverse.reshape(-1)].astype(np.uint8)

    return lut_function


#: Smallest activation range kept: a tensor that was exactly zero on every calibration image
#: would get scale 0, which the quantize op rejects; zeros stay exact with any scale.
MIN_RANGE = 1e-3


def usable_ranges(stats: dict) -> dict:
    """Ranges with a non-zero span, so every quantize op gets a positive scale."""
    fixed = {}
    for name, r in stats.items():
        lo, hi = float(r["rmin"]), float(r["rmax"])
        if max(abs(lo), abs(hi)) < MIN_RANGE:
            lo, hi = min(lo, 0.0), max(hi, MIN_RANGE)
        fixed[name] = {"rmin": lo, "rmax": hi}
    return fixed


def activation_config():
    import coremltools.optimize.coreml as cto

    return cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=0)
    )


def compress(
    mlmodel,
    mode_name: str,
    ios: int,
    activation_stats: dict | None = None,
    bits: dict[str, int] | None = None,
    fp16_activations: frozenset[str] = frozenset(),
):
    """Apply `mode_name` to a converted ML Program; returns a new MLModel (not loaded).

    `activation_stats` ({tensor name: {"rmin", "rmax"}}, inputs included) is required for w8a8;
    `bits` (weight name -> palette bits, from coreml.sensitivity) for palettize-auto;
    `fp16_activations`: w8a8 tensors whose quantize/dequantize pairs are removed afterwards
    (they stay fp16; coreml.fp16_activations chooses them)."""
    mode = get_mode(mode_name)
    if mode.name == "none":
        return mlmodel
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    passes = []
    if mode.activations is not None:
        if not activation_stats:
            raise ExportError(
                "w8a8 needs activation ranges from calibration; none were computed (internal error)"
            )
        config = activation_config()
        activation_stats = usable_ranges(activation_stats)
        for name in (
            "compression::insert_prefix_quantize_dequantize_pair",
            "compression::insert_suffix_quantize_dequantize_pair",
        ):
            p = PASS_REGISTRY[name]
            p.set_options([PassOption("config", config), PassOption("activation_stats", activation_stats)])
            passes.append(p)
        passes.append(PASS_REGISTRY["common::dequantize_quantize_pair_elimination"])
        if fp16_activations:
            passes.append(_remove_quantize_pairs(fp16_activations))
    weight_pass = PASS_REGISTRY[
        "compression::palettize_weights" if mode.palettizes else "compression::linear_quantize_weights"
    ]
    weight_pass.set_options(
        [PassOption("config", _weight_config(mlmodel, mode, bits)), PassOption("joint_compression", False)]
    )
    passes.append(weight_pass)
    return apply_passes(mlmodel, passes, ios)


def _remove_quantize_pairs(names: frozenset[str]):
    """A graph pass: each quantize reading one of `names`, and the dequantizes reading it, go;
    their readers read the float value. What `mil.Program.float_values` simulates."""
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass

    class RemoveQuantizePairs(AbstractGraphPass):
        def apply(self, prog):
            for block in prog.functions.values():
                with block:
                    for op in list(block.operations):
                        if (
                            op.op_type != "quantize"
                            or op.enclosing_block is None
                            or op.input.name not in names
                        ):
                            continue
                        readers = list(op.outputs[0].child_ops)
                        if not readers or any(r.op_type != "dequantize" for r in readers):
                            continue
                        for dq in readers:
                            block.replace_uses_of_var_after_op(
                                anchor_op=dq, old_var=dq.outputs[0], new_var=op.input
                            )
                        block.remove_ops(readers + [op])

    return RemoveQuantizePairs()


def apply_passes(mlmodel, passes, ios: int):
    """Run graph passes on the program and serialize once through `guarded_pipeline`."""
    from coremltools.converters.mil.converter import _reset_conversion_state, mil_convert
    from coremltools.models import utils as model_utils

    _reset_conversion_state()  # op-name counters: same program, same names, same bytes

    spec = mlmodel.get_spec()
    version = max(spec.specificationVersion, _spec_version(ios))
    prog = model_utils._apply_graph_pass(
        mlmodel, passes, spec_version=version, skip_model_load=True, return_pymil_prog=True
    )
    return mil_convert(
        prog,
        convert_from="milinternal",
        convert_to="mlprogram",
        compute_units=mlmodel.compute_unit,
        specification_version=version,
        model_description=spec.description,
        skip_model_load=True,
        main_pipeline=guarded_pipeline(drop_fp16_cast=True),
    )


def _spec_version(ios: int) -> int:
    import coremltools as ct

    return {
        16: ct._SPECIFICATION_VERSION_IOS_16,
        17: ct._SPECIFICATION_VERSION_IOS_17,
        18: ct._SPECIFICATION_VERSION_IOS_18,
    }[ios]
