"""`mobile-export bench` runs and reports sane fields. Benchmarks are not tests: nothing here
checks a time against a threshold, only that the numbers are consistent with each other and
with the file (a real .pte exported at low resolution, timed in the real ExecuTorch runtime)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from mobile_export.bench import format_bench, peak_gmacs
from mobile_export.cli import main

MODEL = "v1-025"  # the smallest graph of the family: the fastest real export
RESOLUTION = 64
RUNS = 8


def _invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="session")
def pte(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_export")
    code, stdout, stderr = _invoke(
        MODEL,
        "--target",
        "executorch",
        "--weights",
        "random",
        "--resolution",
        RESOLUTION,
        "--no-verify",
        "--out",
        out,
    )
    assert code == 0, stderr
    (path,) = out.glob("*.pte")
    return path


@pytest.fixture(scope="session")
def pte_report(pte):
    code, stdout, stderr = _invoke("bench", pte, "--json", "--runs", RUNS, "--warmup", 1)
    assert code == 0, stderr
    return json.loads(stdout)


def _check_timing(block: dict, runs: int):
    lat = block["latency_ms"]
    assert lat["runs"] == runs
    assert 0 < lat["p10"] <= lat["median"] <= lat["p90"]
    assert block["first_run_ms"] > 0
    assert block["gmacs_per_s"] > 0
    assert 0 < block["fraction_of_peak"] <= 1


def test_bench_pte_reports_runtime_and_file(pte, pte_report):
    r = pte_report
    assert r["artifact"] == pte.name
    assert r["bytes"] == pte.stat().st_size
    assert r["precision"] == "fp32" and r["quantization"] == "none"
    assert r["model"] == "mobilenet_v1_025" and r["resolution"] == RESOLUTION and r["threads"] == 1
    # the .pte holds the fp32 weights: its size is at least 4 bytes per parameter
    assert r["params"] > 0 and r["bytes"] >= 4 * r["params"]
    assert r["macs"] > 0
    assert r["executorch"]["load_ms"] > 0
    _check_timing(r["executorch"], RUNS)
    _check_timing(r["eager"], RUNS)
    # one MAC count, two timings: GMAC/s must follow the medians
    et, eager = r["executorch"], r["eager"]
    assert et["gmacs_per_s"] == pytest.approx(r["macs"] / et["latency_ms"]["median"] / 1e6, rel=0.02)
    assert eager["gmacs_per_s"] == pytest.approx(r["macs"] / eager["latency_ms"]["median"] / 1e6, rel=0.02)
    assert r["peak"]["gmacs"] > 0 and "core(s)" in r["peak"]["how"]
    assert r["host"]["cores"] >= 1


def test_bench_model_name_times_eager_only():
    code, stdout, stderr = _invoke("bench", MODEL, "--json", "--runs", 5, "--warmup", 1, "--threads", 2)
    assert code == 0, stderr
    r = json.loads(stdout)
    assert r["artifact"] is None and "executorch" not in r
    assert r["model"] == "mobilenet_v1_025" and r["resolution"] == 224 and r["threads"] == 2
    _check_timing(r["eager"], 5)
    # the registry's published MACs for this variant (conv + linear) agree with the counted ones
    from mobile_export.models.registry import get_spec

    assert r["macs"] / 1e6 == pytest.approx(get_spec(MODEL).mmacs, rel=0.01)


def test_bench_human_output_names_both_runtimes(pte, pte_report):
    text = format_bench(pte_report)  # what `mobile-export bench` prints without --json
    assert "ExecuTorch" in text and "PyTorch eager" in text and "GMAC/s" in text and "% of peak" in text
    assert f"{pte.stat().st_size:,} bytes" in text


def test_bench_refuses_damaged_and_missing_files(pte, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(pte.parent, copy)
    damaged = copy / pte.name
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    code, stdout, stderr = _invoke("bench", damaged, "--runs", 2)
    assert code == 1 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and pte.name in stderr

    code, _, stderr = _invoke("bench", tmp_path / "nothing.pte", "--runs", 2)
    assert code == 1 and "does not exist" in stderr


def test_measured_clock_is_a_core_clock():
    """Chains of add-immediate are folded by newer Intel renamers: the old probe read 19.96 GHz
    on a Xeon here, which made every fraction of peak five times too small."""
    import platform
    import shutil

    from mobile_export.bench import _measure_clock_ghz

    if platform.machine() != "x86_64" or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("the clock probe needs an x86-64 C compiler")
    assert 0.8 <= _measure_clock_ghz() <= 6.5


def test_peak_arithmetic_follows_the_simd_width():
    zen5 = {
        "clock_ghz_measured": 4.0,
        "clock_ghz_reported": 2.6,
        "avx512": True,
        "avx2": True,
        "fma": True,
        "vnni": True,
        "vendor": "AuthenticAMD",
        "family": 26,
        "cores": 2,
    }
    # 16 fp32 lanes x 2 FMA pipes x 4 GHz per core; VNNI: 4 int8 MACs per lane
    assert peak_gmacs(1, "fp32", zen5)["gmacs"] == pytest.approx(128.0)
    assert peak_gmacs(2, "fp32", zen5)["gmacs"] == pytest.approx(256.0)
    assert peak_gmacs(1, "int8", zen5)["gmacs"] == pytest.approx(512.0)
    assert peak_gmacs(8, "fp32", zen5)["gmacs"] == pytest.approx(256.0)  # never more cores than exist
    zen4 = dict(zen5, family=25)  # 512-bit ops double-pumped on 256-bit units: one pipe
    assert peak_gmacs(1, "fp32", zen4)["gmacs"] == pytest.approx(64.0)
    avx2 = dict(zen5, avx512=False, vnni=False, vendor="GenuineIntel", family=6)
    assert peak_gmacs(1, "fp32", avx2)["gmacs"] == pytest.approx(64.0)
    assert peak_gmacs(1, "int8", avx2)["gmacs"] == pytest.approx(128.0)
    # a clock measured on a busy machine reads low; the peak keeps the higher estimate
    busy = dict(zen5, clock_ghz_measured=1.3)
    assert peak_gmacs(1, "fp32", busy)["gmacs"] == pytest.approx(83.2)
    assert "2.60 GHz (reported)" in peak_gmacs(1, "fp32", busy)["how"]
    unknown = dict(zen5, clock_ghz_measured=None, clock_ghz_reported=None)
    assert peak_gmacs(1, "fp32", unknown)["gmacs"] is None


def test_bench_rebuilds_a_feature_encoder_from_its_manifest():
    """bench times the manifest's architecture; an encoder's manifest records num_classes 0,
    which must not be passed on as a class count (it once stopped `bench` on a V5 .pte)."""
    from mobile_export.models import create_from_manifest

    built = create_from_manifest(
        {"name": "mobilenet_v5_300m", "output": "features", "num_classes": 0, "resolution": 256},
        weights="random",
    )
    assert (built.spec.output, built.num_classes, built.resolution) == ("features", 0, 256)
    classifier = create_from_manifest(
        {"name": "mobilenet_v2_100", "output": "logits", "num_classes": 17, "resolution": 64},
        weights="random",
    )
    assert classifier.num_classes == 17
