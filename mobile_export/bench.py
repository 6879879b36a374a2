"""How fast and how small: latency of a .pte in the ExecuTorch runtime and of the PyTorch
eager reference on this host, with the achieved fraction of the CPU's peak.

An artifact is measured by its target (`Target.benchmark`): a .pte runs in the ExecuTorch
runtime's child process (the one verify uses), with the thread pool set before loading, so a
damaged file cannot take the CLI down; an .mlpackage reports size and structure. Numbers are medians of many calls after a warm-up; shared machines are noisy, so
compare ratios measured in the same run, not absolute times across runs.

Peak compute is derived, not looked up: cores x clock x SIMD lanes x FMA pipes.
  fp32: one FMA = one multiply-accumulate per 32-bit lane (16 lanes with AVX-512, 8 with AVX2).
  int8: with VNNI, vpdpbusd does 4 u8*s8 MACs per 32-bit lane (64 per 512-bit instruction);
        without VNNI the vpmaddubsw/vpmaddwd pair gives about twice the fp32 MAC rate.
  clock: measured by timing a chain of dependent integer adds (1 cycle each) in a tiny C
        program when a C compiler exists (VMs report only the nominal TSC clock in
        /proc/cpuinfo); otherwise the highest "cpu MHz" there.
  FMA pipes: 2 for AVX-512 on AMD Zen 5 (family 26) and Intel server cores; 1 x 512-bit for
        Zen 4 (family 25, double-pumped 256-bit); 2 for AVX2-only cores."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from .errors import MobileExportError

_CLOCK_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
/* 600 bursts of 1M dependent register adds (~0.3 ms each, shorter than a scheduler slice).
   Register, not immediate, operands: newer Intel renamers fold chains of add-immediate and
   would read 5x the clock. The 90th-percentile burst is an undisturbed one, and unlike the
   fastest it is immune to a clock-source glitch. */
static int cmp(const void *a, const void *b) {
    double d = *(const double *)a - *(const double *)b; return (d > 0) - (d < 0);
}
int main(void) {
    unsigned long x = 1, y = 1; const long iters = 100000; double ghz[600];
    for (int r = 0; r < 600; r++) {
        struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < iters; i++) {
            __asm__ volatile(
                "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                : "+r"(x) : "r"(y));
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
        ghz[r] = iters * 10.0 / s / 1e9;
    }
    qsort(ghz, 600, sizeof ghz[0], cmp);
    printf("%f\n", ghz[540]);
    return x == 0;
}
"""


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """Model, family, SIMD flags and clock of this host."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields: dict[str, str] = {}
    mhz = []
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        fields.setdefault(key, val)
        if key == "cpu MHz":
            mhz.append(float(val))
    flags = set(fields.get("flags", "").split())
    measured = _measure_clock_ghz()
    return {
        "model": fields.get("model name", platform.processor() or platform.machine()),
        "vendor": fields.get("vendor_id", ""),
        "family": int(fields["cpu family"]) if fields.get("cpu family", "").isdigit() else None,
        "cores": os.cpu_count(),
        "avx512": "avx512f" in flags,
        "avx2": "avx2" in flags,
        "fma": "fma" in flags,
        "vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
        "clock_ghz_reported": round(max(mhz) / 1000, 3) if mhz else None,
        "clock_ghz_measured": measured,
    }


def _measure_clock_ghz() -> float | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or platform.machine() not in ("x86_64", "AMD64"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "clock.c", Path(tmp) / "clock"
        src.write_text(_CLOCK_C)
        try:
            subprocess.run([cc, "-O1", "-o", str(exe), str(src)], check=True, capture_output=True, timeout=60)
            ghz = float(subprocess.run([str(exe)], capture_output=True, text=True, timeout=60).stdout)
        except (subprocess.SubprocessError, OSError, ValueError):
            return None
    return round(ghz, 3)


def peak_gmacs(threads: int, dtype: str = "fp32", cpu: dict | None = None) -> dict:
    """Theoretical peak multiply-accumulates per second for `threads` cores, with the
    arithmetic that produced it."""
    cpu = cpu or cpu_info()
    # A peak is an upper bound: take the higher clock estimate. A clock measured while other
    # processes hold the cores reads low, and a peak below what was achieved means nothing.
    clocks = {k: cpu[f"clock_ghz_{k}"] for k in ("measured", "reported") if cpu[f"clock_ghz_{k}"]}
    if not clocks:
        return {"gmacs": None, "how": "clock unknown"}
    source, ghz = max(clocks.items(), key=lambda kv: kv[1])
    lanes = 16 if cpu["avx512"] else 8 if cpu["avx2"] else 4
    if cpu["avx512"]:
        pipes = 1 if (cpu["vendor"] == "AuthenticAMD" and cpu["family"] == 25) else 2
    else:
        pipes = 2 if cpu["fma"] else 1
    if dtype == "int8":
        per_lane = 4 if cpu["vnni"] else 2
        how_unit = f"{per_lane} int8 MACs per 32-bit lane ({'VNNI' if cpu['vnni'] else 'no VNNI'})"
    else:
        per_lane = 1
        how_unit = "1 fp32 MAC per lane (FMA)"
    cores = min(threads, cpu["cores"] or threads)
    gmacs = cores * ghz * lanes * pipes * per_lane
    how = f"{cores} core(s) x {ghz:.2f} GHz ({source}) x {lanes} lanes x {pipes} FMA pipe(s) x {how_unit}"
    return {"gmacs": round(gmacs, 1), "how": how}


def _percentiles(times_ms: list[float]) -> dict:
    qs = statistics.quantiles(times_ms, n=10, method="inclusive") if len(times_ms) > 1 else [times_ms[0]] * 9
    return {
        "median": round(statistics.median(times_ms), 4),
        "p10": round(qs[0], 4),
        "p90": round(qs[-1], 4),
        "runs": len(times_ms),
    }


def bench_eager(module, shape, threads: int, runs: int, warmup: int) -> dict:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            t0 = time.perf_counter()
            module(x)
            first = (time.perf_counter() - t0) * 1000
            for _ in range(warmup):
                module(x)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                module(x)
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(old)
    return {"first_run_ms": round(first, 3), "latency_ms": _percentiles(times)}


def timing(measured: dict) -> dict:
    """A target's raw timing (times_ms per call, first_run_ms, load_ms) as the report's block."""
    block = {k: v for k, v in measured.items() if k != "times_ms"}
    if "times_ms" in measured:
        block["latency_ms"] = _percentiles(list(measured["times_ms"]))
    return block


def bench_target(target: str, threads: int = 1, runs: int = 50, warmup: int = 5, log=lambda _m: None) -> dict:
    """Benchmark an artifact (.pte / .mlpackage, with its eager reference) or a model name
    (eager reference only)."""
    from .models.stats import count_macs

    path = Path(target)
    result: dict = {"host": {**cpu_info(), "python": platform.python_version()}, "threads": threads}
    if path.suffix.lower() in (".pte", ".mlpackage") or path.exists():
        from . import manifest as mf
        from .targets import target_for_artifact

        if not path.exists():
            raise MobileExportError(
                f"{str(path)!r} does not exist; pass an exported .pte or .mlpackage or a model name"
            )
        tgt = target_for_artifact(path)
        tgt.check_file(path)
        manifest, entry = mf.entry_for(path)
        mf.check_sha256(path, entry)
        from .models import create_from_manifest

        # Latency does not depend on the weights' values: time the same architecture with
        # random weights, so a benchmark never needs the checkpoint (or the network).
        built = create_from_manifest(manifest["model"], weights="random")
        result.update(
            artifact=path.name,
            bytes=entry.bytes,
            precision=entry.precision,
            quantization=entry.quantization_mode,
        )
        result[tgt.name] = timing(tgt.benchmark(path, entry, threads, runs, warmup, log))
    else:
        from .models import create_model

        built = create_model(target, weights="random")
        result["artifact"] = None
    log(f"timing the PyTorch eager reference ({threads} thread(s))...")
    result["eager"] = bench_eager(built.module, built.input_shape, threads, runs, warmup)
    macs = count_macs(built.module, built.resolution)
    params = sum(p.numel() for p in built.module.parameters())
    result.update(model=built.spec.name, resolution=built.resolution, params=params, macs=macs)
    int8 = result.get("quantization") not in (None, "none")
    peak = peak_gmacs(threads, "int8" if int8 else "fp32")
    result["peak"] = peak
    for key in ("executorch", "eager"):
        if key in result and "latency_ms" in result[key]:
            median_s = result[key]["latency_ms"]["median"] / 1000
            achieved = macs / median_s / 1e9
            result[key]["gmacs_per_s"] = round(achieved, 2)
            if peak["gmacs"]:
                result[key]["fraction_of_peak"] = round(achieved / peak["gmacs"], 4)
    return result


def format_bench(r: dict) -> str:
    lines = [
        f"{r['model']} @ {r['resolution']}px  params {r['params']:,}  MACs {r['macs'] / 1e6:,.1f}M  threads {r['threads']}"
    ]
    if r.get("artifact"):
        lines.append(
            f"artifact {r['artifact']}  {r['bytes']:,} bytes  {r['precision']} / {r['quantization']}"
        )
    for key, label in (("executorch", "ExecuTorch"), ("eager", "PyTorch eager")):
        if key in r:
            b = r[key]
            lat = b["latency_ms"]
            extra = f"  load {b['load_ms']:.1f} ms" if "load_ms" in b else ""
            frac = f" ({b['fraction_of_peak'] * 100:.1f}% of peak)" if "fraction_of_peak" in b else ""
            lines.append(
                f"{label:<14} median {lat['median']:.3f} ms  p10 {lat['p10']:.3f}  p90 {lat['p90']:.3f}  "
                f"first {b['first_run_ms']:.1f} ms{extra}  {b['gmacs_per_s']:.1f} GMAC/s{frac}"
            )
    if "executorch-coreml" in r:
        c = r["executorch-coreml"]
        lines.append(
            f"Core ML delegate .pte {c['bytes']:,} bytes (payload {c['payload_bytes']:,}), opset {c['opset']}, "
            f"compile specs {', '.join(f'{k}={v}' for k, v in c['compile_specs'].items())}"
        )
        lines.append("ops per backend: " + ", ".join(f"{k} {v}" for k, v in c["ops_by_backend"].items()))
        lines.append("Core ML ops: " + ", ".join(f"{k} {v}" for k, v in c["core_ml_ops"].items()))
        lines.append(f"payload load (unflatten + parse) median {c['payload_load_ms']:.1f} ms")
        lines.append(f"latency: {c['latency']}")
    if "coreml" in r:
        c = r["coreml"]
        lines.append(
            f"Core ML package {c['bytes']:,} bytes (weights {c['weight_bin_bytes']:,}), opset {c['opset']}"
        )
        lines.append("ops: " + ", ".join(f"{k} {v}" for k, v in c["ops"].items()))
        lines.append(f"latency: {c['latency']}")
    lines.append(f"peak {r['peak']['gmacs']} GMAC/s = {r['peak']['how']}")
    return "\n".join(lines)
