"""The Linux parity check has teeth: each realistic defect, written into a copy of a saved
.mlpackage (its protobuf or its weight.bin), makes the check fail, while the untouched
package passes. The check is the one verify applies: executor logits vs PyTorch on the
bundled photos, judged by mobile_export.verify.metrics / thresholds (fp32 row)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("coremltools")

from test_mil_executor import PHOTOS, Family, logits_name, run_logits  # noqa: E402

from mobile_export.coreml.mil import load_program  # noqa: E402
from mobile_export.coreml.mil.program import package_paths, read_spec  # noqa: E402
from mobile_export.errors import ArtifactError  # noqa: E402
from mobile_export.verify import metrics, thresholds  # noqa: E402

pytestmark = [
    pytest.mark.skipif(len(PHOTOS) < 4, reason="needs the bundled photographs (scikit-image)"),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return Family("v2-035", 96, tmp_path_factory.mktemp("mut"), precisions=("fp32",))


@pytest.fixture(scope="module")
def reference(fam):
    return fam.reference(torch.float32)


def parity_failures(package: Path, fam: Family, reference: np.ndarray) -> tuple[list[str], dict]:
    program = load_program(package)
    got = run_logits(program, fam.feeds())
    values = metrics.compare(reference, got)
    key, limits = thresholds.limits_for({"precision": "fp32"})
    return thresholds.check(values, limits, key), values


def mutated(fam: Family, tmp_path: Path) -> tuple[Path, object]:
    dest = tmp_path / "mutant.mlpackage"
    shutil.copytree(fam.packages["fp32"], dest)
    return dest, read_spec(package_paths(dest)[0])


def save_spec(package: Path, spec) -> None:
    package_paths(package)[0].write_bytes(spec.SerializeToString())


def block(spec):
    fn = spec.mlProgram.functions["main"]
    return fn.block_specializations[fn.opset]


def test_untouched_package_passes(fam, reference):
    failures, values = parity_failures(fam.packages["fp32"], fam, reference)
    assert failures == [], failures
    assert values["sqnr_db"] > 60


def test_swapped_channel_order_fails(fam, reference, tmp_path):
    """The package declares BGR: Core ML would hand the program B,G,R planes."""
    from coremltools.proto import FeatureTypes_pb2

    dest, spec = mutated(fam, tmp_path)
    spec.description.input[0].type.imageType.colorSpace = FeatureTypes_pb2.ImageFeatureType.BGR
    save_spec(dest, spec)
    assert load_program(dest).inputs[0].color_layout == "BGR"
    failures, values = parity_failures(dest, fam, reference)
    assert failures and values["sqnr_db"] < 40, values


def _const_feeding(spec, op_type: str, param: str):
    ops = {o.outputs[0].name: o for o in block(spec).operations if o.outputs}
    for op in block(spec).operations:
        if op.type == op_type:
            name = op.inputs[param].arguments[0].name
            if ops.get(name) is not None and ops[name].type == "const":
                return ops[name]
    raise AssertionError(f"no {op_type} reads a const {param}")


def test_wrong_normalization_fails(fam, reference, tmp_path):
    """Inception normalization (mean 0.5) instead of ImageNet's in the program's `sub`."""
    dest, spec = mutated(fam, tmp_path)
    mean = _const_feeding(spec, "sub", "y")
    value = mean.attributes["val"]
    assert value.WhichOneof("value") == "immediateValue", "mean expected inline"
    floats = value.immediateValue.tensor.floats.values
    assert np.allclose(list(floats), fam.built.preprocess.mean, atol=1e-6)
    for i in range(len(floats)):
        floats[i] = 0.5
    save_spec(dest, spec)
    failures, values = parity_failures(dest, fam, reference)
    assert failures and values["sqnr_db"] < 40, values


def test_corrupted_weight_blob_fails(fam, reference, tmp_path):
    """Flip the sign of half the bytes' high bits in the largest blob's data (records intact)."""
    dest, _ = mutated(fam, tmp_path)
    weights = package_paths(dest)[1] / "weight.bin"
    raw = bytearray(weights.read_bytes())
    offset, best = 64, (0, 0)
    while offset + 64 <= len(raw):
        sentinel, _dtype, size, data = struct.unpack_from("<IIQQ", raw, offset)
        if sentinel != 0xDEADBEEF:
            break
        best = max(best, (size, data))
        offset = (data + size + 63) // 64 * 64
    size, data = best
    assert size > 1000
    chunk = np.frombuffer(bytes(raw[data : data + size]), np.float32).copy()
    chunk[::2] = -chunk[::2]  # a flipped sign bit in every other weight
    raw[data : data + size] = chunk.tobytes()
    weights.write_bytes(bytes(raw))
    failures, values = parity_failures(dest, fam, reference)
    assert failures, values


def test_truncated_weight_file_is_an_artifact_error(fam, tmp_path):
    dest, _ = mutated(fam, tmp_path)
    weights = package_paths(dest)[1] / "weight.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="weight.bin"):
        load_program(dest)


def test_dropped_activation_fails(fam, reference, tmp_path):
    """Remove one ReLU6 (`clip`) from the middle of the network and wire its input through."""
    dest, spec = mutated(fam, tmp_path)
    ops = block(spec).operations
    clips = [i for i, op in enumerate(ops) if op.type == "clip"]
    assert len(clips) > 10
    index = clips[len(clips) // 2]
    victim = ops[index]
    source, dropped = victim.inputs["x"].arguments[0].name, victim.outputs[0].name
    for op in ops:
        for arg in op.inputs.values():
            for binding in arg.arguments:
                if binding.name == dropped:
                    binding.name = source
    del ops[index]
    save_spec(dest, spec)
    program = load_program(dest)
    assert len([o for o in program.compute_ops() if o.type == "clip"]) == len(clips) - 1
    failures, values = parity_failures(dest, fam, reference)
    assert failures, values
    assert logits_name(program)
