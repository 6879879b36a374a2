"""Known bug classes injected into exported files, so a test can prove that `verify` fails on
each of them (and passes the correct file). Shared by tests/test_mutations.py and
scripts/threshold_measurements.py.

Each mutation reaches the file the way the bug would:
- through the target's own code path, monkeypatched during a re-export (ExecuTorch, XNNPACK
  and Core ML delegate alike, both export through lowering.export_module: the normalisation
  fold `with_normalization` gets the channels in BGR order, no mean, no 1/std, or a model copy
  with one activation removed);
- by editing the saved file (Core ML: the program's image scale/bias constants, the input's
  declared colour order, one activation op, one layer's weight blob in weight.bin; ExecuTorch
  XNNPACK: one layer's constant data inside the .pte; ExecuTorch Core ML delegate: the same
  weight.bin edit as an .mlpackage's, made in the payload inside the .pte, same size, in
  place), with the manifest's sha256 updated so verify reaches the numeric check.
The correct files come from the real pipeline (`run_export`) with a trained checkpoint."""

from __future__ import annotations

import contextlib
import copy
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "tests" / "fixtures" / "trained"
CHECKPOINTS = {
    "v2": "mobilenet_v2_100_photos_64.safetensors",
    "v3s": "mobilenet_v3_small_100_photos_64.safetensors",
}
MODEL_OF = {"v2": "mobilenet_v2_100", "v3s": "mobilenet_v3_small_100"}

MUTATIONS = ("rb_swap", "no_mean", "no_std", "activation_dropped", "layer_scrambled", "layer_sign_flipped")


@dataclass(frozen=True)
class Mode:
    """One supported export mode: the target and the options that select it."""

    name: str
    target: str
    options: dict

    def export_options(self, calibration: Path | None, calibration_limit: int):
        from mobile_export.targets import ExportOptions

        opts = dict(self.options)
        if opts.get("quantize") == "int8" or opts.get("compress") in ("w8a8", "palettize-auto"):
            opts.update(calibration=calibration, calibration_limit=calibration_limit)
        return ExportOptions(**opts)


MODES = {
    "pte-fp32": Mode("pte-fp32", "executorch", {}),
    "pte-int8": Mode("pte-int8", "executorch", {"quantize": "int8"}),
    "coreml-fp32": Mode("coreml-fp32", "coreml", {"precision": "fp32"}),
    "coreml-fp16": Mode("coreml-fp16", "coreml", {"precision": "fp16"}),
    "coreml-int8": Mode("coreml-int8", "coreml", {"compress": "int8"}),
    "coreml-palettize6": Mode("coreml-palettize6", "coreml", {"compress": "palettize6"}),
    "coreml-palettize4": Mode("coreml-palettize4", "coreml", {"compress": "palettize4"}),
    "coreml-palettize-auto": Mode("coreml-palettize-auto", "coreml", {"compress": "palettize-auto"}),
    "coreml-w8a8": Mode("coreml-w8a8", "coreml", {"compress": "w8a8"}),
    # ExecuTorch .pte whose compute is one Core ML delegate (int8: weight-only, compile spec)
    "pte-coreml-fp16": Mode("pte-coreml-fp16", "executorch-coreml", {"precision": "fp16"}),
    "pte-coreml-int8": Mode("pte-coreml-int8", "executorch-coreml", {"compress": "int8"}),
}
# V3-Small's int8 recipe (tests/test_int8_quality.py: the default measured 98.4-98.9% agreement)
INT8_RECIPE = {"v3s": {"fp32_modules": ["conv_stem", "bn1", "blocks.0"], "bias_correction": True}}


def photo_folders(work: Path, calibration: int = 32, held_out: int = 48) -> tuple[Path, Path]:
    """PNG folders from the photo task: training crops for calibration, held-out crops to verify."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import int8_quality
    import train_small

    calib, held = Path(work) / f"calibration_{calibration}", Path(work) / f"held_out_{held_out}"
    if not calib.exists() or not held.exists():
        data = train_small.load_dataset("photos", 64, seed=0)
        int8_quality.write_calibration_folder(calib, data.train_x, calibration, seed=0)
        int8_quality.write_calibration_folder(held, data.test_x, held_out, seed=1)
    return calib, held


def export_correct(model: str, mode: Mode, out: Path, calibration: Path, calibration_limit: int = 32) -> Path:
    """The correct file of `mode` through the real pipeline (no verify); returns its path."""
    from mobile_export.pipeline import ExportRequest, run_export

    options = mode.export_options(calibration, calibration_limit)
    if mode.name == "pte-int8" and model in INT8_RECIPE:
        from dataclasses import replace

        options = replace(options, extra={"quant_recipe": INT8_RECIPE[model]})
    manifest = run_export(
        ExportRequest(
            model=MODEL_OF[model],
            target=mode.target,
            out=out,
            weights=str(TRAINED / CHECKPOINTS[model]),
            resolution=64,
            force=True,
            verify=False,
            options=options,
        )
    )
    entry = next(a for a in manifest["artifacts"] if a["format"] in ("pte", "mlpackage"))
    return Path(out) / entry["file"]


# --- mutations through the ExecuTorch target's code path (re-export) --------------------


def _first_conv(module):
    import torch

    return next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels == 3)


def _drop_one_activation(module):
    """A copy of `module` with the middle activation module replaced by nn.Identity."""
    import torch

    model = copy.deepcopy(module)
    kinds = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.Hardswish, torch.nn.GELU, torch.nn.SiLU)
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
    name, _ = named[len(named) // 2]
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, torch.nn.Identity())
    return model


@contextlib.contextmanager
def patched_executorch_fold(mutation: str):
    """Replace the normalization wrapper the .pte exports use (lowering.with_normalization,
    called by lowering.export_module, which the XNNPACK target and the Core ML delegate both
    call; it looks the name up in lowering's globals at call time) by a broken one for the
    duration."""
    import torch

    from mobile_export.executorch import lowering as et

    original = et.with_normalization

    def broken(module, mean, std):
        if mutation == "rb_swap":  # the file reads B where R belongs: permute the stem's input channels
            model = copy.deepcopy(module)
            conv = _first_conv(model)
            with torch.no_grad():
                conv.weight.copy_(conv.weight[:, [2, 1, 0]])
            return original(model, tuple(mean)[::-1], tuple(std)[::-1])
        if mutation == "no_mean":
            return original(module, (0.0, 0.0, 0.0), std)
        if mutation == "no_std":
            return original(module, mean, (1.0, 1.0, 1.0))
        if mutation == "activation_dropped":
            return original(_drop_one_activation(module), mean, std)
        raise ValueError(mutation)

    et.with_normalization = broken
    try:
        yield
    finally:
        et.with_normalization = original


# --- mutations by editing the saved file --------------------------------------------------


def copy_export(artifact: Path, dest_dir: Path) -> Path:
    """Copy an artifact and its manifest into dest_dir; returns the copy's path."""
    from mobile_export import manifest as mf

    dest_dir = Path(dest_dir)
    if dest_dir.exists():
        shutil.rmtree(dest_dir)
    dest_dir.mkdir(parents=True)
    artifact = Path(artifact)
    copy_path = dest_dir / artifact.name
    (shutil.copytree if artifact.is_dir() else shutil.copy2)(artifact, copy_path)
    shutil.copy2(artifact.parent / mf.FILENAME, dest_dir / mf.FILENAME)
    for extra in ("labels.txt",):
        if (artifact.parent / extra).exists():
            shutil.copy2(artifact.parent / extra, dest_dir / extra)
    return copy_path


def refresh_sha256(artifact: Path) -> None:
    """Record the edited file's sha256 in its manifest, as a re-export would."""
    from mobile_export import manifest as mf

    doc = mf.read_manifest(artifact.parent / mf.FILENAME)
    entry = next(a for a in doc["artifacts"] if a["file"] == artifact.name)
    entry["sha256"] = mf.sha256_file(artifact)
    mf.write_manifest(artifact.parent, doc)


def _rng():
    return np.random.default_rng(0)


def quantized_of(pte: Path):
    """The quantized PyTorch model behind an int8 .pte, rebuilt from its manifest's recipe the
    way `verify` rebuilds it when none is passed in. A mutant keeps the correct file's manifest
    (edits copy it; a re-export with a broken fold records the same recipe), so verify would
    rebuild this same model for every mutant: the tests rebuild it once and pass it in."""
    from mobile_export import manifest as mf
    from mobile_export.targets import target_for_artifact
    from mobile_export.verify.reference import rebuild_reference

    manifest, entry = mf.entry_for(pte)
    built = rebuild_reference(manifest, None)
    return target_for_artifact(pte).quantized_reference(pte, entry, built, manifest).model


def _bytes_of(buffer) -> bytes:
    return bytes(buffer.buffer if hasattr(buffer, "buffer") else buffer)


def edit_pte_layer(pte: Path, mutation: str) -> None:
    """Scramble or sign-flip one mid-network layer's constant data inside the .pte (XNNPACK's
    named data: fp32 weights, or int8 weights with float32 per-channel scales)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    data = bytearray(pte.read_bytes())
    named = deserialize_pte_binary(bytes(data)).named_data
    keys = sorted(named.pte_data, key=lambda k: named.pte_data[k].buffer_index)
    int8 = any(k.startswith("scale_") for k in keys)
    # The int8 weights themselves, never their scales: XNNPACK refuses a negative scale when it
    # loads the program, which tests the loader rather than the comparison.
    candidates = [
        k
        for k in keys
        if not k.startswith("scale_")
        and len(_bytes_of(named.buffers[named.pte_data[k].buffer_index])) >= 4096
    ]
    key = candidates[len(candidates) // 2]
    buf = _bytes_of(named.buffers[named.pte_data[key].buffer_index])
    at = data.find(buf)
    assert at >= 0 and data.find(buf, at + 1) < 0, "the layer's bytes must occur exactly once in the file"
    dtype = np.int8 if (int8 and not key.startswith("scale_")) else np.float32
    values = np.frombuffer(buf, dtype=dtype).copy()
    if mutation == "layer_scrambled":
        values = _rng().permutation(values)
    elif mutation == "layer_sign_flipped":
        values = (
            -values if dtype == np.float32 else np.clip(-values.astype(np.int16), -128, 127).astype(np.int8)
        )
    else:
        raise ValueError(mutation)
    data[at : at + len(buf)] = values.tobytes()
    pte.write_bytes(bytes(data))


def edit_pte_coreml_layer(pte: Path, mutation: str) -> None:
    """`edit_coreml_layer` on the Core ML payload inside an executorch-coreml .pte: the payload
    unpacked to a temporary folder, its model.mlpackage's weight.bin edited, and the edited
    bytes written back over the same region of the .pte (the size does not change, so the
    program's offsets and the payload's index stay valid)."""
    import tempfile

    from mobile_export.executorch import flatfs
    from mobile_export.executorch.coreml_delegate import PACKAGE_DIR, core_ml_payload

    data = bytearray(pte.read_bytes())
    delegate, payload = core_ml_payload(bytes(data), pte.name)
    offset, size = flatfs.file_regions(payload)[f"{PACKAGE_DIR}/Data/com.apple.CoreML/weights/weight.bin"]
    with tempfile.TemporaryDirectory(prefix="mutant_pte_coreml_") as tmp:
        package = flatfs.unflatten(payload, tmp) / PACKAGE_DIR
        edit_coreml_layer(package, mutation)
        edited = _weights_file(package).read_bytes()
    assert len(edited) == size, "the edit must keep weight.bin's size"
    assert edited != payload[offset : offset + size], "the edit must change weight.bin"
    start = delegate.offset + offset
    data[start : start + size] = edited
    pte.write_bytes(bytes(data))


def _spec_path(package: Path) -> Path:
    return package / "Data" / "com.apple.CoreML" / "model.mlmodel"


def _ops(spec):
    from mobile_export.coreml.spec import main_block

    return list(main_block(spec).operations)


def _save_spec(package: Path, spec) -> None:
    _spec_path(package).write_bytes(spec.SerializeToString())


def edit_coreml_input(package: Path, mutation: str, mean, std) -> None:
    """BGR declared on the image input, the ImageType bias (the mean) zeroed, or the 1/std
    fold undone (the pixel scale times std per channel, as if the stem conv had not absorbed it)."""
    from coremltools.proto import FeatureTypes_pb2

    from mobile_export.coreml.target import load_spec

    spec = load_spec(package)
    if mutation == "rb_swap":
        spec.description.input[0].type.imageType.colorSpace = FeatureTypes_pb2.ImageFeatureType.BGR
        _save_spec(package, spec)
        return
    ops = _ops(spec)
    by_output = {o.name: op for op in ops for o in op.outputs}
    add = next(
        op
        for op in ops
        if op.type == "add"
        and by_output.get(op.inputs["x"].arguments[0].name) is not None
        and by_output[op.inputs["x"].arguments[0].name].type == "mul"
        and by_output[op.inputs["x"].arguments[0].name].inputs["x"].arguments[0].name
        == spec.description.input[0].name
    )
    mul = by_output[add.inputs["x"].arguments[0].name]
    bias_const = by_output[add.inputs["y"].arguments[0].name]
    scale_const = by_output[mul.inputs["y"].arguments[0].name]
    bias_val = bias_const.attributes["val"]
    scale = float(scale_const.attributes["val"].immediateValue.tensor.floats.values[0])
    if mutation == "no_mean":
        bias_val.immediateValue.tensor.floats.values[:] = [0.0, 0.0, 0.0]
    elif mutation == "no_std":
        bias_val.immediateValue.tensor.floats.values[:] = [-m * s for m, s in zip(mean, std)]
        scale_val = scale_const.attributes["val"]
        scale_val.CopyFrom(bias_val)
        scale_val.immediateValue.tensor.floats.values[:] = [scale * s for s in std]
    else:
        raise ValueError(mutation)
    _save_spec(package, spec)


def edit_coreml_activation(package: Path) -> None:
    """The middle activation op (clip = ReLU6, relu, ...) turned into identity."""
    from mobile_export.coreml.target import load_spec

    spec = load_spec(package)
    acts = [op for op in _ops(spec) if op.type in ("clip", "relu", "relu6", "hardswish", "silu", "gelu")]
    op = acts[len(acts) // 2]
    op.type = "identity"
    for name in [k for k in op.inputs if k != "x"]:
        del op.inputs[name]
    _save_spec(package, spec)


def _blob_refs(op, by_output) -> list:
    """blobFileValue records of `op` (its attributes) and of the consts feeding it."""
    refs = []
    for val in op.attributes.values():
        if val.WhichOneof("value") == "blobFileValue":
            refs.append(val)
    for arg in op.inputs.values():
        for a in arg.arguments:
            if a.WhichOneof("binding") == "value":  # iOS18 ops bind their constants inline
                if a.value.WhichOneof("value") == "blobFileValue":
                    refs.append(a.value)
                continue
            producer = by_output.get(a.name)
            if producer is not None and producer.type == "const":
                val = producer.attributes["val"]
                if val.WhichOneof("value") == "blobFileValue":
                    refs.append(val)
    return refs


def edit_coreml_layer(package: Path, mutation: str) -> None:
    """Scramble (permute) or sign-flip one mid-network conv's weights in weight.bin, whatever
    their storage: fp16/fp32 values, int8 data and its scale, or a palette and its indices."""
    from mobile_export.coreml.target import load_spec

    spec = load_spec(package)
    ops = _ops(spec)
    by_output = {o.name: op for op in ops for o in op.outputs}
    convs = [
        op
        for op in ops
        if op.type == "conv"
        and "weight" in op.inputs
        and by_output[op.inputs["weight"].arguments[0].name] is not None
    ]
    producer = None
    for conv in convs[len(convs) // 2 :]:
        producer = by_output[conv.inputs["weight"].arguments[0].name]
        if producer.type == "cast":  # fp16 weights cast for an fp32 op: go one step back
            producer = by_output[producer.inputs["x"].arguments[0].name]
        refs = _blob_refs(producer, by_output)
        if refs:
            break
    floats = [r for r in refs if r.type.tensorType.dataType in (10, 11)]
    if mutation == "layer_sign_flipped":
        # a float blob of the weight (values, scale or palette): negating it flips the layer's sign
        ref = max(floats or refs, key=lambda r: _blob_header(package, r)[1])
    elif mutation == "layer_scrambled":
        ref = max(refs, key=lambda r: _blob_header(package, r)[1])  # the values / indices themselves
    else:
        raise ValueError(mutation)
    _edit_blob(package, ref, mutation)


def _weights_file(package: Path) -> Path:
    return package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"


def _blob_header(package: Path, ref) -> tuple[int, int, int]:
    with open(_weights_file(package), "rb") as fh:
        fh.seek(ref.blobFileValue.offset)
        _sentinel, dtype, nbytes, data_offset = struct.unpack("<IIQQ", fh.read(24))
    return dtype, nbytes, data_offset


def _edit_blob(package: Path, ref, mutation: str) -> None:
    _storage_type, nbytes, data_offset = _blob_header(package, ref)
    dtype = ref.type.tensorType.dataType  # MIL data type code (the record's own code is another enum)
    path = _weights_file(package)
    data = bytearray(path.read_bytes())
    raw = bytes(data[data_offset : data_offset + nbytes])
    np_type = {10: np.float16, 11: np.float32, 21: np.int8}.get(
        dtype, np.uint8
    )  # sub-byte: permute whole bytes
    values = np.frombuffer(raw, dtype=np_type).copy()
    if mutation == "layer_scrambled":
        values = _rng().permutation(values)
    elif np_type == np.int8:
        values = np.clip(-values.astype(np.int16), -128, 127).astype(np.int8)
    elif np_type == np.uint8:
        values = (255 - values).astype(np.uint8)  # palette indices: every weight moves to another entry
    else:
        values = -values
    data[data_offset : data_offset + nbytes] = values.tobytes()
    path.write_bytes(bytes(data))


def make_mutant(
    correct: Path,
    mode: Mode,
    mutation: str,
    work: Path,
    model: str,
    calibration: Path,
    calibration_limit: int = 32,
    mean=None,
    std=None,
) -> Path:
    """The file of `mode` with `mutation` injected; a new folder under `work`."""
    dest = Path(work) / f"{mode.name}-{mutation}"
    if mode.target in ("executorch", "executorch-coreml"):
        if mutation in ("layer_scrambled", "layer_sign_flipped"):
            pte = copy_export(correct, dest)
            (edit_pte_layer if mode.target == "executorch" else edit_pte_coreml_layer)(pte, mutation)
            refresh_sha256(pte)
            return pte
        with patched_executorch_fold(mutation):
            return export_correct(model, mode, dest, calibration, calibration_limit)
    package = copy_export(correct, dest)
    if mutation in ("rb_swap", "no_mean", "no_std"):
        edit_coreml_input(package, mutation, mean, std)
    elif mutation == "activation_dropped":
        edit_coreml_activation(package)
    else:
        edit_coreml_layer(package, mutation)
    refresh_sha256(package)
    return package
