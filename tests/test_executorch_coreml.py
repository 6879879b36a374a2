"""executorch-coreml: a .pte whose compute is one Core ML delegate, verified on Linux by
running its Core ML payload (unpacked with our own reader) in the ML Program executor.

Parity uses the trained fixture (MobileNetV2 1.0 on real photos, 64 px): untrained weights
give image-independent logits and would pass anything. Family coverage uses BN-woken
synthetic weights (et_helpers): delegation does not depend on the values."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from et_helpers import write_weights

from mobile_export import manifest as mf
from mobile_export.errors import ArtifactError, UsageError
from mobile_export.pipeline import ExportRequest, run_export
from mobile_export.targets import ExportOptions, get_target, target_for_artifact
from mobile_export.verify.thresholds import THRESHOLDS

pytest.importorskip("executorch")
pytest.importorskip("coremltools")

ROOT = Path(__file__).resolve().parents[1]
TRAINED_V2 = ROOT / "tests" / "fixtures" / "trained" / "mobilenet_v2_100_photos_64.safetensors"
# name -> resolution; the default run lowers V3-Small (plus the trained V2 below), the rest -m slow.
FAMILY_DEFAULT = {"mobilenet_v3_small_100": 64}
# Synthetic (BN-woken) weights that lose more at fp16 than the fp16 row allows, measured with
# -m slow on 2026-12-02 (11 bundled photos, 64 px): these members are held to the measurement
# minus 3 dB, so a regression still fails; trained checkpoints pass the row (54-57 dB,
# docs/matrix_trained.md).
SYNTHETIC_FP16_DB = {"mobilenet_v3_large_100": 29.8, "mobilenet_v4_hybrid_medium": 16.3}
FAMILY_SLOW = {
    "mobilenet_v1_100": 64,
    "mobilenet_v2_035": 64,
    "mobilenet_v3_large_100": 64,
    "mobilenet_v4_conv_small": 64,
    "mobilenet_v4_conv_medium": 64,
    "mobilenet_v4_conv_large": 64,
    "mobilenet_v4_hybrid_medium": 64,
}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("et_coreml")


def export_trained(out: Path, verify: bool = True, **option_fields) -> tuple[Path, dict]:
    options = ExportOptions(**option_fields)
    manifest = run_export(
        ExportRequest(
            model="mobilenet_v2_100",
            target="executorch-coreml",
            out=out,
            weights=str(TRAINED_V2),
            resolution=64,
            force=True,
            verify=verify,
            options=options,
        )
    )
    entry = next(a for a in manifest["artifacts"] if a["target"] == "executorch-coreml")
    return out / entry["file"], entry


@pytest.fixture(scope="module")
def fp16(work, one_thread_module):
    return export_trained(work / "fp16", precision="fp16")


@pytest.fixture(scope="module")
def fp32(work, one_thread_module):
    return export_trained(work / "fp32", precision="fp32")


@pytest.fixture(scope="module")
def one_thread_module():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- export + parity on the trained model -------------------------------------------------


def test_fp16_trained_parity_and_full_delegation(fp16):
    from importlib import metadata

    import executorch  # noqa: F401

    path, entry = fp16
    assert path.name == "mobilenet_v2_100_coreml_fp16.pte"
    delegation = entry["delegation"]
    assert delegation["backend"] == "CoreMLBackend" and delegation["complete"], delegation["outside"]
    assert delegation["delegated_subgraphs"] == 1 and delegation["delegated_ops"] > 100
    assert entry["runtime"] == {
        "name": "executorch",
        "version": metadata.version("executorch"),
        "backends": ["CoreMLBackend"],
    }
    assert entry["coreml"]["compute_units"] == "all" and entry["coreml"]["deployment_target"] == "iOS17"
    assert entry["coreml"]["ops"]["conv"] == 52 and entry["coreml"]["payload_normalized"]
    parity = entry["parity"]
    assert parity["passed"] and parity["failures"] == [] and parity["warnings"] == [], parity
    assert parity["thresholds"]["key"] == "fp16"
    assert parity["vs_float"]["sqnr_db"] >= THRESHOLDS["fp16"]["sqnr_db"]
    assert parity["vs_float"]["top1_agreement"] >= THRESHOLDS["fp16"]["top1_agreement"]
    assert parity["images"]["count"] >= 8


@pytest.mark.slow
def test_fp32_trained_parity_at_60_db(fp32):
    path, entry = fp32
    assert path.name == "mobilenet_v2_100_coreml_fp32.pte"
    parity = entry["parity"]
    assert parity["passed"] and parity["warnings"] == [], parity
    assert parity["vs_float"]["sqnr_db"] >= 60.0, parity["vs_float"]
    assert parity["vs_float"]["top1_flips"] == parity["vs_float"]["top1_flips_on_ties"]
    assert entry["coreml"]["compute_precision"] == "fp32" and "cast" not in entry["coreml"]["ops"]


@pytest.mark.slow
def test_same_command_gives_the_same_bytes(work, fp16):
    """Reproducible: upstream's uuid4 identifier, coremltools' date and random package UUIDs
    are normalized away; a second export of the same request is byte-identical."""
    path, entry = fp16
    again, again_entry = export_trained(work / "fp16_again", verify=False, precision="fp16")
    assert again_entry["sha256"] == entry["sha256"] == mf.sha256_file(path)
    assert again.read_bytes() == path.read_bytes()


def test_verify_per_layer_report_from_the_payload(fp16, tmp_path):
    from mobile_export.verify import verify_artifact

    path, _ = fp16
    report = verify_artifact(path, limit=3, per_layer=True, report_dir=tmp_path / "layers")
    assert report["passed"], report["failures"]
    per_layer = report["per_layer"]
    assert per_layer["layers"] >= 50  # 52 convs + the classifier, matched to PyTorch modules
    table = Path(per_layer["files"]["markdown"]).read_text()
    assert "conv" in table and "Core ML payload vs PyTorch" in table


def test_manifest_target_picks_the_reader(fp16, tmp_path):
    """The .pte suffix is shared: the manifest entry's target decides; old entries (no
    executorch-coreml) and files without a manifest are XNNPACK."""
    path, _ = fp16
    assert target_for_artifact(path).name == "executorch-coreml"
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(path, old / path.name)
    manifest = json.loads((path.parent / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        a["target"] = "executorch"
        a.pop("runtime", None)
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert target_for_artifact(old / path.name).name == "executorch"
    lonely = tmp_path / "lonely.pte"
    shutil.copy(path, lonely)
    assert target_for_artifact(lonely).name == "executorch"


def test_check_file_refuses_other_programs(fp16, tmp_path):
    target = get_target("executorch-coreml")
    path, _ = fp16
    target.check_file(path)
    data = bytearray(path.read_bytes())
    bad = tmp_path / "magic.pte"
    bad.write_bytes(bytes(data[:4]) + b"XX12" + bytes(data[8:]))
    with pytest.raises(ArtifactError, match="ET12"):
        target.check_file(bad)
    cut = tmp_path / "cut.pte"
    cut.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ArtifactError):
        target.check_file(cut)


# --- the mutation test --------------------------------------------------------------------


def _largest_blob(weight_bin: bytes) -> tuple[int, int]:
    """(data offset, size) of the largest blob in a Core ML weight.bin: 64-byte file header,
    then per blob a 64-byte record (sentinel, dtype, size, data offset) and its data."""
    count = struct.unpack_from("<I", weight_bin, 0)[0]
    pos, best = 64, (0, 0)
    for _ in range(count):
        sentinel, _dtype, size, offset = struct.unpack_from("<IIQQ", weight_bin, pos)
        assert sentinel == 0xDEADBEEF
        if size > best[1]:
            best = (offset, size)
        pos = -(-(offset + size) // 64) * 64
    return best


def test_a_changed_weight_inside_the_payload_fails_verify(fp16, tmp_path):
    """Change one conv's weights inside the .pte (same size), keep the manifest's sha256
    consistent: verify must fail on parity, not on the checksum."""
    from mobile_export.executorch import flatfs
    from mobile_export.executorch.coreml_delegate import core_ml_payload
    from mobile_export.verify import verify_artifact

    path, _ = fp16
    out = tmp_path / "mutated"
    out.mkdir()
    shutil.copy(path.parent / "manifest.json", out / "manifest.json")
    data = bytearray(path.read_bytes())
    delegate, payload = core_ml_payload(bytes(data))
    offset, size = flatfs.file_regions(payload)["model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"]
    weight_bin = payload[offset : offset + size]
    blob, blob_size = _largest_blob(weight_bin)
    start = delegate.offset + offset + blob + blob_size // 4
    n = blob_size // 2 // 2
    original = np.frombuffer(bytes(data[start : start + 2 * n]), np.float16)
    data[start : start + 2 * n] = (-original * 4).astype(np.float16).tobytes()
    mutated = out / path.name
    mutated.write_bytes(bytes(data))
    manifest = mf.read_manifest(out)
    entry = next(a for a in manifest["artifacts"] if a["file"] == path.name)
    entry["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    mf.write_manifest(out, manifest)

    report = verify_artifact(mutated, limit=4)
    assert not report["passed"]
    assert any("SQNR" in f for f in report["failures"]), report["failures"]
    assert report["vs_float"]["sqnr_db"] < 20.0


# --- our reader against the wheel's -------------------------------------------------------


def _tree(folder: Path) -> dict[str, bytes]:
    from mobile_export.executorch import flatfs

    return flatfs.directory_files(folder)


def test_reader_matches_the_wheel_on_a_real_payload(fp16, tmp_path):
    from executorch.backends.apple.coreml import executorchcoreml

    from mobile_export.executorch import flatfs
    from mobile_export.executorch.coreml_delegate import core_ml_payload

    path, _ = fp16
    _, payload = core_ml_payload(path.read_bytes())
    (tmp_path / "wheel").mkdir()
    (tmp_path / "ours").mkdir()
    assert executorchcoreml.unflatten_directory_contents(payload, str(tmp_path / "wheel"))
    root = flatfs.unflatten(payload, tmp_path / "ours")
    assert root.name == "lowered_module"
    theirs, ours = _tree(tmp_path / "wheel"), _tree(tmp_path / "ours")
    assert "lowered_module/model.mlpackage/Data/com.apple.CoreML/weights/weight.bin" in ours
    assert ours == theirs


def _crafted(folder: Path) -> None:
    """Nested folders, a folder with only a folder in it, names with braces, quotes and
    backslashes (the index is found by scanning braces), binary content. No empty file: the
    wheel's flatten_directory_contents segfaults on one (measured; our writer handles it, the
    wheel's unflatten reads it, see the next test)."""
    (folder / "a" / "b" / "c").mkdir(parents=True)
    (folder / "only_dirs" / "inner").mkdir(parents=True)
    (folder / "only_dirs" / "inner" / "x.txt").write_text("x")
    (folder / 'we}ird{"name\\.json').write_text('{"nodes": [}')
    (folder / "a" / "b" / "c" / "deep.bin").write_bytes(bytes(range(256)) * 37)
    (folder / "a" / "top.txt").write_text("}" * 100)
    (folder / "a" / "b" / "ünïcode.txt").write_text("héllo")


def test_reader_and_writer_match_the_wheel_on_a_crafted_directory(tmp_path):
    from executorch.backends.apple.coreml import executorchcoreml

    from mobile_export.executorch import flatfs

    src = tmp_path / "src"
    src.mkdir()
    _crafted(src)
    expected = _tree(src)
    assert len(expected) == 5

    # wheel writes, we read
    flattened = executorchcoreml.flatten_directory_contents(str(src))
    assert flattened
    (tmp_path / "ours").mkdir()
    root = flatfs.unflatten(flattened, tmp_path / "ours")
    assert _tree(root) == expected

    # we write, the wheel reads
    ours = flatfs.flatten(expected, "src")
    (tmp_path / "wheel").mkdir()
    assert executorchcoreml.unflatten_directory_contents(ours, str(tmp_path / "wheel"))
    assert _tree(tmp_path / "wheel" / "src") == expected
    assert flatfs.flatten(expected, "src") == ours  # deterministic


def test_empty_file_and_root_only(tmp_path):
    from executorch.backends.apple.coreml import executorchcoreml

    from mobile_export.executorch import flatfs

    files = {"e.bin": b"", "x.txt": b"x", "d/e2.bin": b""}
    ours = flatfs.flatten(files, "root")
    assert flatfs.read_files(ours) == files
    assert executorchcoreml.unflatten_directory_contents(ours, str(tmp_path))
    assert _tree(tmp_path / "root") == files


def test_reader_refuses_damaged_payloads(fp16):
    from mobile_export.executorch import flatfs
    from mobile_export.executorch.coreml_delegate import core_ml_payload

    _, payload = core_ml_payload(fp16[0].read_bytes())
    with pytest.raises(ArtifactError, match="index"):
        flatfs.read_index(payload[:-10])  # the index's first bytes are cut off
    with pytest.raises(ArtifactError, match="outside the data"):
        flatfs.read_index(payload[200:])  # offsets now point past the data
    with pytest.raises(ArtifactError):
        flatfs.read_index(b"no index here")


def test_android_bundle_skips_the_core_ml_delegate_pte(fp16, tmp_path):
    from mobile_export.bundle import bundle_artifacts

    path, _ = fp16
    app = tmp_path / "android_app"
    app.mkdir()
    with pytest.raises(UsageError, match="none of the artifacts can run in the android app"):
        bundle_artifacts([path], app="android", app_dir=app)
    assert not (app / "app").exists()


# --- bench --------------------------------------------------------------------------------


def test_bench_reads_the_payload_and_reports_no_latency(fp16):
    from mobile_export.bench import format_bench
    from mobile_export.executorch.coreml_delegate import ExecuTorchCoreMLTarget

    path, entry = fp16
    b = ExecuTorchCoreMLTarget().benchmark(path, entry, threads=1, runs=2, warmup=0, log=lambda _m: None)
    assert b["ops_by_backend"]["CoreMLBackend"] == entry["delegation"]["delegated_ops"]
    assert b["ops_by_backend"]["portable CPU (outside the delegate)"] == 0
    assert b["core_ml_ops"]["conv"] == 52 and b["payload_bytes"] < b["bytes"] == path.stat().st_size
    assert b["payload_load_ms"] > 0
    assert b["compile_specs"]["compute_units"] == "all"
    assert "not measured" in b["latency"]
    text = format_bench(
        {
            "model": "m",
            "resolution": 64,
            "params": 1,
            "macs": 1,
            "threads": 1,
            "executorch-coreml": b,
            "peak": {"gmacs": None, "how": "-"},
        }
    )
    assert "latency: not measured" in text


# --- what is refused, and why -------------------------------------------------------------


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--compress", "w8a8"], "dequantize_quantize_pair_elimination"),
        (["--compress", "palettize4"], "not available through ExecuTorch's Core ML delegate"),
        (["--quantize", "int8"], "--compress int8"),
    ],
)
def test_refused_requests_name_the_reason(cli, tmp_path, args, needle):
    code, _out, err = cli(
        "mobilenet_v2_035",
        "--target",
        "executorch-coreml",
        "--weights",
        "random",
        "--resolution",
        "64",
        "--out",
        tmp_path / "x",
        "--no-verify",
        *args,
    )
    assert code == 2, err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_compute_units_only_with_the_core_ml_delegate(cli, tmp_path):
    code, _out, err = cli(
        "mobilenet_v2_035",
        "--target",
        "executorch",
        "--compute-units",
        "cpu_and_ne",
        "--weights",
        "random",
        "--resolution",
        "64",
        "--out",
        tmp_path / "x",
        "--no-verify",
    )
    assert code == 2 and "executorch-coreml" in err


def test_compiled_model_needs_a_mac(monkeypatch):
    from mobile_export.executorch.coreml_delegate import ExecuTorchCoreMLTarget
    from mobile_export.models import create_model

    built = create_model("mobilenet_v2_035", weights="random", resolution=64)
    target = get_target("executorch-coreml")
    monkeypatch.setattr(ExecuTorchCoreMLTarget, "model_type", "compiled_model")
    with pytest.raises(UsageError, match="macOS"):
        target.validate(built, ExportOptions())
    assert (
        target.artifact_name(built, ExportOptions(compute_units="cpu_and_ne"))
        == "mobilenet_v2_035_coreml_fp16_cpu_and_ne.pte"
    )


# --- the family: every member lowers completely -------------------------------------------


def _family_cases():
    cases = [pytest.param(n, r, id=f"{n}@{r}") for n, r in FAMILY_DEFAULT.items()]
    cases += [pytest.param(n, r, id=f"{n}@{r}", marks=pytest.mark.slow) for n, r in FAMILY_SLOW.items()]
    return cases


@pytest.mark.parametrize("name,res", _family_cases())
def test_family_member_lowers_fully_at_fp16(work, one_thread_module, name, res):
    """Every member: one Core ML partition, nothing outside. Parity at fp16 passes the fp16 row,
    except where synthetic weights measured below it (SYNTHETIC_FP16_DB: V3-Large 29.8 dB, the V4
    hybrid with attention 16.3 dB): those are held to their measurement (docs/executorch_coreml.md)."""
    from mobile_export.verify import verify_artifact

    # the default case is the trained V3-Small (photo task, 64 px); synthetic weights measured
    # 27.3 dB at fp16 there, under the 30 dB row, which says nothing about the delegate
    trained = TRAINED_V2.parent / f"{name}_photos_{res}.safetensors"
    weights = trained if trained.is_file() else write_weights(name, res, work)
    out = work / f"family_{name}"
    manifest = run_export(
        ExportRequest(
            model=name,
            target="executorch-coreml",
            out=out,
            weights=str(weights),
            resolution=res,
            force=True,
            verify=False,
            options=ExportOptions(precision="fp16"),
        )
    )
    entry = manifest["artifacts"][0]
    delegation = entry["delegation"]
    assert delegation["complete"] and delegation["delegated_subgraphs"] == 1, delegation["outside"]
    report = verify_artifact(out / entry["file"])
    assert report["warnings"] == []
    if name in SYNTHETIC_FP16_DB and not trained.is_file():
        assert report["vs_float"]["sqnr_db"] >= SYNTHETIC_FP16_DB[name] - 3.0, report["vs_float"]
    else:
        assert report["passed"], report["failures"]


@pytest.mark.slow
def test_int8_weights_through_the_compile_spec(work, one_thread_module):
    path, entry = export_trained(work / "int8", precision="fp16", compress="int8")
    assert path.name == "mobilenet_v2_100_coreml_fp16_int8.pte"
    assert entry["quantization"]["mode"] == "int8"
    assert "constexpr_affine_dequantize" in entry["coreml"]["ops"]
    parity = entry["parity"]
    assert parity["thresholds"]["key"] == "fp16/int8" and parity["passed"], parity


@pytest.mark.slow
def test_w8a8_lowers_without_the_pair_elimination_pass_but_is_not_good_enough(
    work, one_thread_module, monkeypatch
):
    """Why --compress w8a8 is refused: with coremltools' dequantize_quantize_pair_elimination
    removed, CoreMLQuantizer's graph lowers fully (with the pass it fails), but on the trained
    V2 it measured 9.8 dB against float, under the 20 dB W8A8 row. If this starts passing,
    lift the refusal."""
    from mobile_export.errors import ParityError
    from mobile_export.executorch.coreml_delegate import ExecuTorchCoreMLTarget

    monkeypatch.setattr(ExecuTorchCoreMLTarget, "w8a8_experimental", True)
    with pytest.raises(ParityError, match="SQNR vs float"):
        export_trained(work / "w8a8", precision="fp16", compress="w8a8")
    manifest = mf.read_manifest(work / "w8a8")
    entry = next(a for a in manifest["artifacts"] if a["file"] == "mobilenet_v2_100_coreml_fp16_w8a8.pte")
    assert entry["quantization"]["mode"] == "w8a8" and entry["delegation"]["complete"], entry["delegation"][
        "outside"
    ]
    assert {"quantize", "dequantize"} <= set(entry["coreml"]["ops"])
    assert entry["parity"]["vs_float"]["sqnr_db"] < 20.0
