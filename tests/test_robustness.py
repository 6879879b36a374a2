"""Issue 8, row by row through the CLI: bad requests, bad checkpoints, odd images, output
problems, bad manifests and damaged artifacts each give one `Error:` line with exit code 1
(failure) or 2 (usage), the CLI process survives, and the output folder holds no partial file.

Library-level checks already in test_weights / test_preprocess / test_fsutil / test_manifest /
test_executorch / test_coreml are not repeated; docs/robustness.md maps every row to its test.
One small real export (V1 0.25 at 32 px, both targets) is shared; crash-prone cases (native
loaders, signals) run the real CLI as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from robust_helpers import (
    MODEL,
    PKG,
    PTE,
    RES,
    WEIGHT_REL,
    cli_inprocess,
    cli_subprocess,
    copy_export,
    flip,
    listing,
    one_line_error,
    repin,
    set_blob_offset,
    shared_export,
    truncate,
)

SMALL = ["v1-025", "--weights", "random", "--resolution", str(RES)]


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Path:
    return shared_export(tmp_path_factory)


def _fails(code_expected: int, *args) -> str:
    code, _, err, escaped = cli_inprocess(*args)
    assert escaped is None, repr(escaped)
    assert code == code_expected, err[-2000:]
    return one_line_error(err)


# --- requests that cannot work: exit 2, the choices named, nothing written ---------------


@pytest.mark.parametrize(
    "args, words",
    [
        (["v2-130"], ["unknown model 'v2-130'", "v2-140", "Known:"]),  # unknown width
        (["v1-025", "--target", "tflite"], ["'tflite'", "executorch", "coreml", "all"]),
        (["v1-025", "--precision", "int4"], ["'int4'", "fp16", "fp32"]),
        (["v1-025", "--compress", "palettize3"], ["'palettize3'", "palettize4", "palettize6", "w8a8"]),
        (["v1-025", "--quantize", "int4"], ["'int4'", "none", "int8"]),
        (["v1-025", "--ios", "15"], ["'15'", "16", "17", "18"]),
        (["v1-025", "--resolution", "8"], ["32<=x<=4096"]),
    ],
)
def test_unknown_choices_are_usage_errors_listing_the_choices(args, words, tmp_path):
    line = _fails(2, *args, "--out", tmp_path / "out")
    assert all(w in line for w in words), line
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    "args, words",
    [
        (
            ["--target", "coreml", "--compress", "palettize4", "--ios", "16"],
            ["needs --ios 18", "--compress none|int8"],
        ),
        (["--target", "coreml", "--compress", "w8a8", "--ios", "16"], ["needs --ios 17"]),
        (["--target", "coreml", "--quantize", "int8"], ["ExecuTorch only", "--compress"]),
        (["--target", "executorch", "--precision", "fp16"], ["Core ML only", "--target coreml"]),
        (["--target", "executorch", "--compress", "palettize4"], ["Core ML only"]),
        (["--target", "coreml", "--normalize-outside"], ["--input tensor"]),
        (["--num-classes", "0"], ["0 is not in the range"]),
    ],
)
def test_impossible_combinations_are_refused_before_any_file(args, words, tmp_path):
    out = tmp_path / "out"
    line = _fails(2, *SMALL, *args, "--out", out)
    assert all(w in line for w in words), line
    assert [p for p in listing(out) if not (out / p).is_dir()] == []  # at most the empty folder


def test_unpublished_checkpoint_and_feature_encoder_rows(tmp_path):
    line = _fails(2, "v1-025", "--weights", "imagenet", "--out", tmp_path / "a")
    assert "no published checkpoint" in line and "--weights random" in line
    line = _fails(2, "v5-300m", "--weights", "random", "--num-classes", "10", "--out", tmp_path / "b")
    assert "feature encoder" in line


# --- checkpoints through the CLI -----------------------------------------------------------


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_rows_are_one_line_and_write_nothing(tmp_path):
    import torch
    from safetensors.torch import save_file

    from mobile_export.models import create_model

    cases = {}
    cases["missing"] = (tmp_path / "nope.pth", "does not exist")
    (tmp_path / "notes.pth").write_text("these are not weights")
    cases["not a checkpoint"] = (tmp_path / "notes.pth", "neither a PyTorch checkpoint")
    marker = tmp_path / "pwned"
    torch.save({"x": _RunsCode(str(marker))}, tmp_path / "evil.pth")
    cases["pickle that runs code"] = (tmp_path / "evil.pth", "refusing to load")
    other = create_model("v3-small", weights="random", resolution=RES).module.state_dict()
    torch.save(other, tmp_path / "v3.pth")
    cases["another architecture"] = (tmp_path / "v3.pth", "mobilenet_v1_025")
    mine = create_model(MODEL, weights="random", resolution=RES).module.state_dict()
    save_file({k: v.contiguous() for k, v in mine.items()}, tmp_path / "w.safetensors")
    truncate(tmp_path / "w.safetensors", (tmp_path / "w.safetensors").stat().st_size // 2)
    cases["truncated safetensors"] = (tmp_path / "w.safetensors", "damaged or truncated")
    for name, (path, words) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        line = _fails(
            1, "v1-025", "--weights", path, "--resolution", RES, "--target", "executorch", "--out", out
        )
        assert words in line, (name, line)
        assert [p for p in listing(out) if not (out / p).is_dir()] == [], name
    assert not marker.exists(), "the pickle's code ran"


# --- images through the CLI ----------------------------------------------------------------


def _image_folders(root: Path) -> dict[str, Path]:
    from PIL import Image

    folders = {name: root / name for name in ("empty", "corrupt", "bomb")}
    for f in folders.values():
        f.mkdir(parents=True)
    (folders["corrupt"] / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (folders["corrupt"] / "b.png").write_bytes(b"not a png")
    Image.new("RGB", (4, 4)).save(folders["bomb"] / "tiny.png")
    _write_bomb(folders["bomb"] / "bomb.png")
    (folders["bomb"] / "tiny.png").unlink()
    folders["missing"] = root / "does-not-exist"
    return folders


def _write_bomb(path: Path, side: int = 60000) -> None:
    """A PNG that declares side x side pixels (3.6 G) but holds almost nothing: a
    decompression bomb, refused from its header before any decoding."""
    import struct
    import zlib

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "folder, words",
    [
        ("missing", "does not exist"),
        ("empty", "no images"),
        ("corrupt", "could be read"),
        ("bomb", "could be read"),
    ],
)
def test_verify_image_folder_rows(exported, tmp_path, folder, words):
    folders = _image_folders(tmp_path / "img")
    line = _fails(1, "verify", exported / PTE, "--images", folders[folder])
    assert words in line, line


@pytest.mark.parametrize(
    "folder, words", [("missing", "does not exist"), ("empty", "no images"), ("corrupt", "could be read")]
)
def test_calibration_folder_rows_leave_no_artifact(tmp_path, folder, words):
    folders = _image_folders(tmp_path / "img")
    out = tmp_path / "out"
    line = _fails(
        1,
        *SMALL,
        "--target",
        "executorch",
        "--quantize",
        "int8",
        "--calibration",
        folders[folder],
        "--out",
        out,
        "--no-verify",
    )
    assert words in line, line
    assert [p for p in listing(out) if not (out / p).is_dir()] == []


def _odd_photos(folder: Path) -> dict[str, Path]:
    """One real photo stored every awkward way: grayscale, CMYK, 16-bit PNG, palette with
    alpha, a 4000 px JPEG, and rotated with an EXIF orientation tag."""
    from PIL import Image

    from mobile_export.preprocess import bundled_photos

    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.open(next(p for p in bundled_photos() if p.name == "chelsea.png")).convert("RGB")
    files = {
        "gray": ("gray.png", photo.convert("L")),
        "cmyk": ("cmyk.jpg", photo.convert("CMYK")),
        "rgba": ("palette.png", photo.convert("RGBA").convert("P")),
        "huge": ("huge.jpg", photo.resize((4000, 3000))),
    }
    paths = {}
    for key, (name, im) in files.items():
        im.save(folder / name)
        paths[key] = folder / name
    sixteen = np.asarray(photo.convert("L"), np.uint16) * 257
    Image.fromarray(sixteen).save(folder / "sixteen.png")
    paths["sixteen"] = folder / "sixteen.png"
    return paths


def _exif_rotated(photo_path: Path, dest: Path, tagged: bool) -> None:
    """Store the photo rotated 90 degrees, as a phone does, with (or without) the EXIF tag
    (orientation 6) that tells readers to turn it upright."""
    from PIL import Image

    im = Image.open(photo_path).convert("RGB")
    exif = Image.Exif()
    if tagged:
        exif[0x0112] = 6
    im.transpose(Image.Transpose.ROTATE_90).save(dest, exif=exif.tobytes())


def test_odd_images_are_handled_for_verify(exported, tmp_path):
    """Every awkward file is read through the CLI (none skipped), including a photo stored
    rotated with an EXIF orientation tag, which the input pipeline turns upright."""
    from PIL import Image

    from mobile_export.preprocess import load_input
    from mobile_export.verify.reference import preprocess_of

    odd = tmp_path / "odd"
    _odd_photos(odd)
    Image.open(odd / "huge.jpg").resize((400, 300)).save(tmp_path / "upright.png")
    _exif_rotated(tmp_path / "upright.png", odd / "exif_rotated.png", tagged=True)
    # Six copies of one photo would make the reference (nearly) the same for every image, so the
    # parity check could not see a colour or normalisation error (issue 21): add other photos.
    from mobile_export.preprocess import bundled_photos

    others = [p for p in bundled_photos() if p.name != "chelsea.png"][:4]
    for photo in others:
        shutil.copy(photo, odd / photo.name)
    code, out, err, escaped = cli_inprocess("verify", exported / PKG, "--images", odd, "--json")
    assert escaped is None and code == 0, err[-2000:]
    report = json.loads(out)
    assert report["images"]["count"] == 6 + len(others) and report["images"]["skipped"] == 0, report["images"]
    assert (
        report["input_dependence"]["sqnr_db_vs_own_mean"] < report["thresholds"]["max_input_independence_db"]
    )

    # The orientation itself, in the function verify and calibration both call: the tagged
    # file gives the upright photo's input exactly, the same pixels without the tag do not.
    # (The small test model's logits barely depend on the image, so they cannot show it.)
    _exif_rotated(tmp_path / "upright.png", tmp_path / "untagged.png", tagged=False)
    pre = preprocess_of(json.loads((exported / "manifest.json").read_text()))
    upright, tagged, untagged = (
        load_input(tmp_path / n, pre) for n in ("upright.png", "odd/exif_rotated.png", "untagged.png")
    )
    assert np.array_equal(tagged, upright)
    assert np.abs(untagged - upright).max() > 0.1


@pytest.mark.slow
def test_odd_images_are_handled_for_calibration(tmp_path):
    """The same awkward files calibrate a w8a8 Core ML export: all used, none skipped."""
    odd = tmp_path / "odd"
    paths = _odd_photos(odd)
    _exif_rotated(paths["gray"], odd / "exif_rotated.png", tagged=True)
    out = tmp_path / "out"
    code, _, err, escaped = cli_inprocess(
        *SMALL, "--target", "coreml", "--compress", "w8a8", "--calibration", odd, "--out", out, "--no-verify"
    )
    assert escaped is None and code == 0, err[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    calibration = manifest["artifacts"][0]["quantization"]["calibration"]
    assert calibration["images"] == 6 and calibration["skipped"] == 0


# --- output folder problems ----------------------------------------------------------------


def test_output_under_a_regular_file_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = _fails(1, *SMALL, "--target", "executorch", "--out", blocker / "sub")
    assert "cannot create output folder" in line
    assert listing(tmp_path) == ["file"]


def _mount_tmpfs(where: Path, options: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    where.mkdir(parents=True, exist_ok=True)
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
        ).returncode
        == 0
    )


def _umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], capture_output=True)


def test_read_only_output_folder_is_one_line(tmp_path):
    ro = tmp_path / "ro"
    if not _mount_tmpfs(ro, "ro,size=1m"):
        pytest.skip("needs root and mount to make a read-only folder (root ignores permission bits)")
    try:
        line = _fails(1, *SMALL, "--target", "executorch", "--out", ro)
        assert "not writable" in line
        assert listing(ro) == []
    finally:
        _umount(ro)


def test_existing_artifact_is_refused_without_force(exported, tmp_path):
    folder = copy_export(exported, tmp_path / "again")
    before = {p: (folder / p).stat().st_mtime_ns for p in listing(folder)}
    weights = json.loads((folder / "manifest.json").read_text())["model"]["weights"]["path"]
    for target, name in (("executorch", PTE), ("coreml", PKG)):
        line = _fails(
            1, "v1-025", "--weights", weights, "--resolution", RES, "--target", target, "--out", folder
        )
        assert name in line and "--force" in line, line
    assert {p: (folder / p).stat().st_mtime_ns for p in listing(folder)} == before


def test_disk_full_mid_export_leaves_nothing(tmp_path):
    """A real export into a 512 KiB filesystem: the .mlpackage (1 MB) does not fit."""
    full = tmp_path / "full"
    if not _mount_tmpfs(full, "size=512k"):
        pytest.skip("needs root and mount for a tiny tmpfs")
    try:
        out = full / "out"
        line = _fails(1, *SMALL, "--target", "coreml", "--out", out, "--no-verify")
        assert "disk full" in line and "--out" in line, line
        assert listing(full) == ["out"]  # the folder we asked for, and nothing in it
    finally:
        _umount(full)


def _signal_state(pid: int) -> str:
    """The child's ignored and blocked signal masks (/proc), for the failure message."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return "exited"
    return " ".join(
        line.replace("\t", "") for line in lines if line.startswith(("SigIgn", "SigBlk", "SigCgt"))
    )


def test_ctrl_c_during_lowering_keeps_the_old_artifact_whole(exported, tmp_path):
    """SIGINT to a real CLI while it lowers: exit 130, one line, and the folder is exactly as
    before (the previous .pte byte for byte, no temporary left).

    The child starts with SIGINT at its default, as a terminal's foreground job does: a test run
    launched in the background of a non-interactive shell ignores SIGINT, its children inherit
    that, and the interrupt was then lost (the export finished with exit 0)."""
    folder = copy_export(exported, tmp_path / "again")
    before = listing(folder)
    old = (folder / PTE).read_bytes()
    weights = json.loads((folder / "manifest.json").read_text())["model"]["weights"]["path"]
    env = dict(os.environ, MOBILE_EXPORT_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mobile_export.cli",
            "v1-025",
            "--weights",
            weights,
            "--resolution",
            str(RES),
            "--target",
            "executorch",
            "--out",
            str(folder),
            "--force",
            "--no-verify",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    temporaries: list[str] = []
    while not temporaries and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        temporaries = [p for p in listing(folder) if p.startswith(".")]
    time.sleep(1.0)  # into the lowering
    state = _signal_state(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    # 130 from our handler; once in about ten runs (2026-12-03) the child printed our one line and
    # was then ended by SIGINT itself (-2), cause not found. A shell reports both as 130 (128 +
    # SIGINT), which is the contract; the line and the untouched folder are checked below.
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, state, err)
    assert temporaries, "the SIGINT did not arrive while the temporary existed"
    assert one_line_error(err).startswith("Error: interrupted")
    assert listing(folder) == before
    assert (folder / PTE).read_bytes() == old


# --- manifests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda m: m.write_text("{ not json"), "not valid JSON"),
        (
            lambda m: m.write_text(m.read_text().replace('"version": 2', '"version": 99', 1)),
            "version 99 is not supported",
        ),
        (lambda m: m.unlink(), "no manifest"),
    ],
)
def test_manifest_rows_via_verify(exported, tmp_path, damage, words):
    folder = copy_export(exported, tmp_path / "copy")
    damage(folder / "manifest.json")
    for artifact in (PTE, PKG):
        line = _fails(1, "verify", folder / artifact)
        assert words in line, line


def test_sha_mismatch_via_verify(exported, tmp_path):
    folder = copy_export(exported, tmp_path / "copy")
    flip(folder / PTE, [len((folder / PTE).read_bytes()) // 2])
    flip(folder / PKG / WEIGHT_REL, [4096])
    for artifact in (PTE, PKG):
        line = _fails(1, "verify", folder / artifact)
        assert "does not match the manifest" in line and artifact in line, line


# --- damaged .mlpackage (the Core ML executor runs inside the CLI process) ------------------


def _without_inputs(package: Path) -> None:
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString((package / "Data/com.apple.CoreML/model.mlmodel").read_bytes())
    del spec.description.input[:]
    (package / "Data/com.apple.CoreML/model.mlmodel").write_bytes(spec.SerializeToString())


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda p: (p / WEIGHT_REL).unlink(), "weight.bin is missing"),
        (lambda p: (p / "Manifest.json").unlink(), "Manifest.json is missing"),
        (
            lambda p: (p / "Data/com.apple.CoreML/model.mlmodel").write_bytes(b"\x0a\xff\xff\xff garbage"),
            "does not parse",
        ),
        (lambda p: flip(p / "Data/com.apple.CoreML/model.mlmodel", [40, 41, 42]), "does not parse"),
        (lambda p: set_blob_offset(p, 1000), "bad sentinel"),
        (lambda p: set_blob_offset(p, 10**12, which=3), "outside the"),
        (lambda p: _without_inputs(p), "lacks its inputs"),  # found by the fuzz: parsed, then IndexError
    ],
)
def test_damaged_mlpackage_rows_in_process(exported, tmp_path, damage, words):
    folder = copy_export(exported, tmp_path / "copy")
    damage(folder / PKG)
    repin(folder / PKG)
    line = _fails(1, "verify", folder / PKG)
    assert words in line, line


def test_damaged_mlpackage_truncated_weights_real_cli(exported, tmp_path):
    """The native blob reader is the crash-prone part: the real CLI in its own process
    (offsets out of range run in-process above and in the fuzz)."""
    folder = copy_export(exported, tmp_path / "copy")
    truncate(folder / PKG / WEIGHT_REL, (folder / PKG / WEIGHT_REL).stat().st_size // 2)
    repin(folder / PKG)
    proc = cli_subprocess("verify", folder / PKG, "--limit", "1")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "truncated" in one_line_error(proc.stderr)


def test_damaged_pte_interior_flips_real_cli(exported, tmp_path):
    """Flips inside the program (past the header test_executorch covers): the runtime's
    child may fail or abort; the CLI reports one line."""
    folder = copy_export(exported, tmp_path / "copy")
    size = (folder / PTE).stat().st_size
    flip(folder / PTE, range(64, 4096, 97))
    repin(folder / PTE)
    proc = cli_subprocess("verify", folder / PTE, "--limit", "1")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert PTE in one_line_error(proc.stderr)
    assert (folder / PTE).stat().st_size == size  # verify never rewrites what it reads
