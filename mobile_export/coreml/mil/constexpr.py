"""Compressed weights: each constexpr op is decompressed once at load time by the static
`decompress()` of coremltools' own op class, so the executor reads compression exactly as
coremltools defines it. iOS16 ops keep their parameters in attributes (and take a `shape`),
iOS18 ops in inputs; the parameter names tell the two apart."""

from __future__ import annotations

from typing import Callable

import numpy as np


def _ios16():
    from coremltools.converters.mil.mil.ops.defs.iOS16 import constexpr_ops

    return constexpr_ops


def _ios18():
    from coremltools.converters.mil.mil.ops.defs.iOS18 import compression

    return compression


def _opt(p: dict, name: str):
    return p.get(name)


def affine_dequantize(p: dict):
    return _ios16().constexpr_affine_dequantize.decompress(
        p["quantized_data"], p["zero_point"], p["scale"], int(p["axis"])
    )


def blockwise_shift_scale(p: dict):
    return _ios18().constexpr_blockwise_shift_scale.decompress(p["data"], p["scale"], _opt(p, "offset"))


def lut_to_dense(p: dict):
    if "shape" in p:  # iOS16: flat lut, bit-packed uint8 indices, explicit shape
        return _ios16().constexpr_lut_to_dense.decompress(
            p["lut"], p["indices"], tuple(int(v) for v in p["shape"])
        )
    axis = p.get("vector_axis")
    return _ios18().constexpr_lut_to_dense.decompress(
        p["indices"], p["lut"], None if axis is None else int(axis)
    )


def sparse_to_dense(p: dict):
    if "shape" in p:  # iOS16: bit-packed uint8 mask over the flattened tensor
        return _ios16().constexpr_sparse_to_dense.decompress(
            p["nonzero_data"], p["mask"], tuple(int(v) for v in p["shape"])
        )
    return _ios18().constexpr_sparse_to_dense.decompress(p["nonzero_data"], p["mask"])


def lut_to_sparse(p: dict):
    axis = p.get("vector_axis")
    return _ios18().constexpr_lut_to_sparse.decompress(
        p["indices_mask"], p["indices_nonzero_data"], p["lut"], None if axis is None else int(axis)
    )


def sparse_blockwise_shift_scale(p: dict):
    return _ios18().constexpr_sparse_blockwise_shift_scale.decompress(
        p["data_mask"], p["nonzero_data"], p["scale"], _opt(p, "offset")
    )


def cast(p: dict):
    return np.asarray(p["source_val"]).astype(
        {"fp32": np.float32, "fp16": np.float16}[str(p["output_dtype"])]
    )


CONSTEXPR_OPS: dict[str, Callable[[dict], object]] = {
    "constexpr_affine_dequantize": affine_dequantize,
    "constexpr_blockwise_shift_scale": blockwise_shift_scale,
    "constexpr_lut_to_dense": lut_to_dense,
    "constexpr_sparse_to_dense": sparse_to_dense,
    "constexpr_lut_to_sparse": lut_to_sparse,
    "constexpr_sparse_blockwise_shift_scale": sparse_blockwise_shift_scale,
    "constexpr_cast": cast,
}
