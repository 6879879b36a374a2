"""`bench FILE.pte --cpu ...`: guest instructions executed per inference on emulated ARM CPUs.

The count is a cost that repeats (ExecuTorch on one thread, the same kernels a phone of that
generation selects), not a time: QEMU's speed says nothing about a phone's, and instructions
differ in cost (a smmla does 8x the MACs of an smlal). Per inference = count(2 inferences) -
count(1), which cancels loading; measured twice, with the relative difference reported."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ... import manifest as mf
from ...errors import ArtifactError
from .cpus import ArmCpu
from .emulate import instructions_per_inference
from .kit import find_kit

INPUT_SEED = 0  # the counted input: uniform [0, 1) floats; the kernels do not branch on values


def arm_bench(paths: list[Path], cpus: list[ArmCpu], log=lambda _m: None) -> dict:
    t0 = time.perf_counter()
    checked = [_checked(Path(path)) for path in paths]  # every file refused before anything slow
    kit = find_kit()
    files = []
    for path, manifest, entry in checked:
        size = int(manifest["model"]["resolution"])
        image = np.random.default_rng(INPUT_SEED).random((1, 3, size, size), dtype=np.float32)
        rows = []
        for cpu in cpus:
            log(f"bench {path.name} on {cpu.name}: counting instructions (4 emulated runs)")
            rows.append(instructions_per_inference(kit, path, image, cpu))
        files.append(
            {
                "artifact": path.name,
                "path": str(path),
                "model": manifest["model"]["name"],
                "resolution": size,
                "precision": entry.get("precision"),
                "variant": _variant(entry),
                "cpus": rows,
            }
        )
    return {
        "what": "guest instructions per inference on emulated ARM CPUs (one thread); not a time",
        "kit": {"qemu": kit.qemu_version, "executorch": kit.executorch_version},
        "files": files,
        "int8_vs_fp32": _ratios(files),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _checked(path: Path) -> tuple[Path, dict, dict]:
    """An XNNPACK .pte with its manifest and entry, its sha256 checked. A Core ML file, or a
    .pte whose payload is Core ML, is a usage error (the same refusal as verify --cpu)."""
    from ...targets import target_for_artifact

    target_for_artifact(path).require_cpu_emulation(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is not a .pte file; bench --cpu counts instructions of .pte files")
    manifest, entry = mf.manifest_for(path)
    mf.check_sha256(path, entry)
    return path, manifest, entry


def _variant(entry: dict) -> str:
    """The file's precision, told apart where two int8 files of one model compute differently."""
    quant = entry.get("quantization") or {}
    return "int8 dynamic" if quant.get("activations") == "dynamic" else str(entry.get("precision"))


def _ratios(files: list[dict]) -> list[dict]:
    """Instruction ratio against fp32, per CPU, for each int8 variant of a model given with its
    fp32 file (static and dynamic int8 each get their own row)."""
    out = []
    by_model: dict[tuple, dict[str, dict]] = {}
    for f in files:
        by_model.setdefault((f["model"], f["resolution"]), {})[f["variant"]] = f
    for (model, res), variants in by_model.items():
        if "fp32" not in variants:
            continue
        fp32 = {r["cpu"]: r["instructions"] for r in variants["fp32"]["cpus"]}
        for variant, f in variants.items():
            for row in f["cpus"] if variant != "fp32" else []:
                if fp32.get(row["cpu"]):
                    out.append(
                        {
                            "model": model,
                            "resolution": res,
                            "variant": variant,
                            "cpu": row["cpu"],
                            "ratio": round(row["instructions"] / fp32[row["cpu"]], 4),
                        }
                    )
    return out


def format_arm_bench(result: dict) -> str:
    lines = [
        f"instructions per inference, ExecuTorch {result['kit']['executorch']} aarch64 under QEMU "
        f"{result['kit']['qemu']}, one thread (a count, not a phone time)"
    ]
    for f in result["files"]:
        for r in f["cpus"]:
            lines.append(
                f"  {f['artifact']:<36} {f['variant']:<12} {r['cpu']:<12} {r['kernels']:<5} "
                f"{r['instructions'] / 1e6:>9.2f} M"
                f"  (two measurements differ by {r['relative_difference'] * 1e6:.0f} ppm)"
            )
    for r in result["int8_vs_fp32"]:
        lines.append(f"  {r['variant']}/fp32 {r['model']}@{r['resolution']} on {r['cpu']}: {r['ratio']:.3f}")
    return "\n".join(lines)
