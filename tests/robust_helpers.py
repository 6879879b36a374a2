"""Shared by test_robustness and test_fuzz: one small real export, damaged copies of its
artifacts (with the manifest re-pinned so the damage reaches the loaders instead of the
sha256 check), checkpoints to damage, and ways to run the CLI and read its answer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

MODEL, RES = "mobilenet_v1_025", 32  # the cheapest member to lower and convert
PTE = f"{MODEL}_fp32.pte"
PKG = f"{MODEL}_fp16.mlpackage"
SPEC_REL = "Data/com.apple.CoreML/model.mlmodel"
WEIGHT_REL = "Data/com.apple.CoreML/weights/weight.bin"


def export_small(root: Path) -> Path:
    """Export MODEL at RES to .pte and .mlpackage through the real pipeline, with
    well-conditioned weights (so the intact artifacts pass parity) written to a file."""
    from et_helpers import write_weights

    from mobile_export.pipeline import ExportRequest, run_export
    from mobile_export.targets import ExportOptions

    root.mkdir(parents=True, exist_ok=True)
    weights = write_weights(MODEL, RES, root)
    out = root / "export"
    run_export(
        ExportRequest(
            model=MODEL,
            target="all",
            out=out,
            weights=str(weights),
            resolution=RES,
            force=True,
            verify=False,
            options=ExportOptions(),
        )
    )
    return out


def shared_export(tmp_path_factory) -> Path:
    """export_small once per pytest session, shared by test_robustness and test_fuzz (their
    session fixtures are separate, the folder is not)."""
    root = tmp_path_factory.getbasetemp() / "robust-export"
    out = root / "export"
    if not (out / "manifest.json").exists():
        if root.exists():
            shutil.rmtree(root)
        export_small(root)
    return out


def listing(folder: Path) -> list[str]:
    """Every path below `folder` (hidden temporaries included), relative and sorted."""
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def copy_export(src: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    return dest


def repin(artifact: Path) -> None:
    """Rewrite the manifest's sha256/bytes of `artifact` to its current (damaged) content."""
    from mobile_export import manifest as mf

    manifest = json.loads((artifact.parent / mf.FILENAME).read_text())
    for entry in manifest["artifacts"]:
        if entry["file"] == artifact.name:
            entry.update(mf.artifact_record(artifact) if artifact.exists() else {})
    (artifact.parent / mf.FILENAME).write_text(json.dumps(manifest, indent=2))


# --- damage ----------------------------------------------------------------------------


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def flip(path: Path, offsets) -> None:
    data = bytearray(path.read_bytes())
    for off in offsets:
        data[off % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def set_blob_offset(package: Path, offset: int, which: int = 0) -> None:
    """Point the `which`-th blob reference of the program at `offset` in weight.bin."""
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString((package / SPEC_REL).read_bytes())
    function = spec.mlProgram.functions["main"]
    seen = 0
    for op in function.block_specializations[function.opset].operations:
        for attr in op.attributes.values():
            if attr.HasField("blobFileValue"):
                if seen == which:
                    attr.blobFileValue.offset = offset
                    (package / SPEC_REL).write_bytes(spec.SerializeToString())
                    return
                seen += 1
    raise AssertionError(f"the program has only {seen} blob references")


def blob_count(package: Path) -> int:
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString((package / SPEC_REL).read_bytes())
    function = spec.mlProgram.functions["main"]
    return sum(
        attr.HasField("blobFileValue")
        for op in function.block_specializations[function.opset].operations
        for attr in op.attributes.values()
    )


def damage_file(path: Path, rng: np.random.Generator) -> str:
    """One random damage to a single file: truncation, byte flips, a zeroed or random
    range, or an overwritten header. Returns a short description."""
    size = path.stat().st_size
    kind = rng.choice(["truncate", "flips", "zeros", "random_range", "header"])
    data = bytearray(path.read_bytes())
    if kind == "truncate" or size == 0:
        keep = int(rng.integers(0, max(size, 1)))
        path.write_bytes(bytes(data[:keep]))
        return f"truncate to {keep} of {size}"
    if kind == "flips":
        n = int(rng.integers(1, 17))
        offsets = rng.integers(0, size, n)
        for off in offsets:
            data[int(off)] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(data))
        return f"{n} byte flip(s)"
    start = int(rng.integers(0, size))
    length = int(min(size - start, rng.integers(1, 4097)))
    if kind == "header":
        start, length = 0, int(min(size, rng.integers(1, 65)))
    fill = bytes(length) if kind == "zeros" else rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    data[start : start + length] = fill
    path.write_bytes(bytes(data))
    return f"{kind} {length} byte(s) at {start}"


def damage_package(package: Path, rng: np.random.Generator) -> str:
    """One random damage to an .mlpackage: a missing file, a damaged spec/weights/manifest,
    or a blob offset out of range."""
    kind = rng.choice(["missing", "spec", "weights", "weights", "manifest", "offset"])
    if kind == "missing":
        rel = rng.choice([SPEC_REL, WEIGHT_REL, "Manifest.json"])
        (package / rel).unlink()
        return f"missing {rel}"
    if kind == "offset":
        size = (package / WEIGHT_REL).stat().st_size
        offset = int(
            rng.choice([size + int(rng.integers(0, 1 << 20)), 2**63 + 5, int(rng.integers(0, size))])
        )
        which = int(rng.integers(0, blob_count(package)))
        set_blob_offset(package, offset, which)
        return f"blob #{which} offset {offset}"
    rel = {"spec": SPEC_REL, "weights": WEIGHT_REL, "manifest": "Manifest.json"}[kind]
    return f"{rel}: {damage_file(package / rel, rng)}"


# --- running the CLI -------------------------------------------------------------------


def cli_inprocess(*args) -> tuple[int, str, str, BaseException | None]:
    """The CLI in this process (click's runner); the last item is an exception that escaped
    the CLI (a crash), None when it exited normally."""
    from click.testing import CliRunner

    from mobile_export.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    escaped = result.exception if not isinstance(result.exception, SystemExit) else None
    return result.exit_code, result.stdout, result.stderr, escaped


def cli_subprocess(*args, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    """The real CLI in its own process."""
    env = dict(os.environ, MOBILE_EXPORT_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "mobile_export.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        **kwargs,
    )


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("Error:")]


def one_line_error(stderr: str) -> str:
    """The single `Error:` line of a failed command; fails the test if there is a
    traceback or not exactly one such line."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]
