"""MIL values from the saved package: immediate protobuf values and blobs in weight.bin.

Blobs are read with coremltools' own reader (`libmilstoragepython`, shipped in the Linux
wheel) after a cheap bounds check of the record, so a damaged weight.bin becomes an
ArtifactError naming the offset instead of an opaque native error."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ...errors import ArtifactError

BLOB_SENTINEL = 0xDEADBEEF
BLOB_HEADER_BYTES = 64

# MIL_pb2.DataType codes -> numpy storage type (sub-byte types unpack to one element per byte).
NUMPY_OF = {
    1: np.bool_,
    10: np.float16,
    11: np.float32,
    12: np.float64,
    21: np.int8,
    22: np.int16,
    23: np.int32,
    24: np.int64,
    25: np.int8,
    31: np.uint8,
    32: np.uint16,
    33: np.uint32,
    34: np.uint64,
    35: np.uint8,
    36: np.uint8,
    37: np.uint8,
    38: np.uint8,
    39: np.uint8,
}
TYPE_NAME = {
    1: "bool",
    2: "string",
    10: "fp16",
    11: "fp32",
    12: "fp64",
    13: "bf16",
    21: "int8",
    22: "int16",
    23: "int32",
    24: "int64",
    25: "int4",
    31: "uint8",
    32: "uint16",
    33: "uint32",
    34: "uint64",
    35: "uint4",
    36: "uint2",
    37: "uint1",
    38: "uint6",
    39: "uint3",
    40: "fp8e4m3",
    41: "fp8e5m2",
}
# sub-byte type code -> (bits, signed)
SUB_BYTE = {25: (4, True), 35: (4, False), 36: (2, False), 37: (1, False), 38: (6, False), 39: (3, False)}
_BLOB_READ = {
    10: "read_fp16_data",
    11: "read_float_data",
    21: "read_int8_data",
    22: "read_int16_data",
    23: "read_int32_data",
    25: "read_int4_data",
    31: "read_uint8_data",
    32: "read_uint16_data",
    33: "read_uint32_data",
    35: "read_uint4_data",
    36: "read_uint2_data",
    37: "read_uint1_data",
    38: "read_uint6_data",
    39: "read_uint3_data",
}


class BlobFile:
    """weight.bin: a 64-byte header (u32 count, u32 version 2), then per blob a 64-byte record
    (u32 sentinel, u32 dtype, u64 size, u64 data offset) and its 64-byte aligned data."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.size = os.path.getsize(self.path)
            with open(self.path, "rb") as fh:
                header = fh.read(BLOB_HEADER_BYTES)
        except OSError:
            raise ArtifactError(
                f"{self.path.name} is missing from the package ({self.path}); re-export the .mlpackage"
            ) from None
        if len(header) < 8 or struct.unpack_from("<I", header, 4)[0] != 2:
            raise ArtifactError(
                f"{self.path} has no valid blob header (expected version 2); the weights file is damaged, re-export the .mlpackage"
            )
        from coremltools.libmilstoragepython import _BlobStorageReader

        self._reader = _BlobStorageReader(str(self.path))

    def _check_record(self, offset: int) -> None:
        if offset < BLOB_HEADER_BYTES or offset + 64 > self.size:
            raise ArtifactError(
                f"{self.path.name}: blob offset {offset} lies outside the {self.size}-byte file; the package is damaged, re-export it"
            )
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            sentinel, _dtype, nbytes, data_offset = struct.unpack("<IIQQ", fh.read(24))
        if sentinel != BLOB_SENTINEL:
            raise ArtifactError(
                f"{self.path.name}: no blob record at offset {offset} (bad sentinel); the weights file is damaged, re-export the .mlpackage"
            )
        if data_offset + nbytes > self.size:
            raise ArtifactError(
                f"{self.path.name}: blob at offset {offset} runs past the end of the file; the weights file is truncated, re-export the .mlpackage"
            )

    def read(self, offset: int, dtype_code: int, shape: tuple[int, ...]) -> np.ndarray:
        self._check_record(offset)
        reader = _BLOB_READ.get(dtype_code)
        if reader is None:
            raise ArtifactError(
                f"{self.path.name}: blob dtype {TYPE_NAME.get(dtype_code, dtype_code)} at offset {offset} is not readable; re-export the .mlpackage"
            )
        try:
            raw = np.asarray(getattr(self._reader, reader)(offset))
        except (RuntimeError, ValueError) as exc:
            raise ArtifactError(
                f"{self.path.name}: blob at offset {offset} is unreadable ({exc}); re-export the .mlpackage"
            ) from None
        if dtype_code == 10:
            raw = raw.view(np.float16)
        count = int(np.prod(shape)) if shape else 1
        if raw.size < count:
            raise ArtifactError(
                f"{self.path.name}: blob at offset {offset} holds {raw.size} values, the program needs {count}; re-export the .mlpackage"
            )
        return raw.reshape(-1)[:count].reshape(shape).astype(NUMPY_OF[dtype_code], copy=False)


class Blobs:
    """The package's weight files by the name the program uses (@model_path/weights/x.bin)."""

    def __init__(self, weights_dir: Path | None):
        self.weights_dir = Path(weights_dir) if weights_dir else None
        self._files: dict[str, BlobFile] = {}

    def read(self, file_name: str, offset: int, dtype_code: int, shape) -> np.ndarray:
        base = file_name.split("/")[-1]
        if base not in self._files:
            if self.weights_dir is None:
                raise ArtifactError(
                    f"the program reads {file_name} but no weights folder was given; load the whole .mlpackage"
                )
            self._files[base] = BlobFile(self.weights_dir / base)
        return self._files[base].read(offset, dtype_code, tuple(shape))


def tensor_shape(tensor_type) -> tuple[int, ...]:
    """Dimensions of a TensorType; unknown sizes are -1."""
    return tuple(
        d.constant.size if d.WhichOneof("dimension") == "constant" else -1 for d in tensor_type.dimensions
    )


def parse_value(value, blobs: Blobs):
    """A MIL Value -> numpy array (tensors, 0-d for scalars), str, or list (listType)."""
    kind = value.type.WhichOneof("type")
    if kind == "tensorType":
        tt = value.type.tensorType
        code, shape = tt.dataType, tensor_shape(tt)
        if value.WhichOneof("value") == "blobFileValue":
            blob = value.blobFileValue
            return blobs.read(blob.fileName, blob.offset, code, shape)
        return _immediate_tensor(value.immediateValue.tensor, code, shape)
    if kind == "listType":
        return [parse_value(v, blobs) for v in value.immediateValue.list.values]
    if kind == "dictionaryType":
        return {
            parse_value(e.key, blobs).item(): parse_value(e.value, blobs)
            for e in value.immediateValue.dictionary.values
        }
    raise ArtifactError(
        f"MIL value of type {kind!r} is not supported by the Linux executor; re-export without it"
    )


def _immediate_tensor(tensor, code: int, shape: tuple[int, ...]):
    which = tensor.WhichOneof("value")
    if code == 2:  # strings
        values = list(tensor.strings.values)
        return values[0] if not shape else np.array(values, dtype=object).reshape(shape)
    if which == "bytes":
        raw = np.frombuffer(tensor.bytes.values, dtype=np.uint8)
        if code in SUB_BYTE:
            from coremltools.optimize._utils import restore_elements_from_packed_bits

            bits, signed = SUB_BYTE[code]
            arr = restore_elements_from_packed_bits(raw, bits, int(np.prod(shape)) if shape else 1, signed)
        else:
            arr = raw.view(NUMPY_OF[code])
        return arr.reshape(shape).astype(NUMPY_OF[code], copy=False)
    values = getattr(tensor, which).values if which else []
    dtype = NUMPY_OF.get(code)
    if dtype is None:
        raise ArtifactError(
            f"immediate MIL tensor of type {TYPE_NAME.get(code, code)} is not supported; re-export without it"
        )
    return np.array(list(values)).astype(dtype).reshape(shape)
