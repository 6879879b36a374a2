"""The .pte on the phone's own kernels: ExecuTorch's aarch64 runtime under QEMU (verify --cpu,
bench --cpu, setup-arm). Needs the kit from `mobile-export setup-arm` (.ci/run builds it); the
emulation tests skip with that reason when it is absent. Weights are trained checkpoints
(tests/fixtures/trained/, outputs depend on the input), so a wrong kernel shows.

Default: the trained V1 0.50 at 64 px, fp32 and int8, on cortex-a76. Several CPUs and models:
-m slow."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from et_helpers import photo_folder, write_weights

from mobile_export.errors import ArmSetupError, EmulationError, UsageError
from mobile_export.executorch.arm import CPUS, find_kit, parse_cpus
from mobile_export.executorch.arm.kit import HOME_ENV, RUNNER_ENV

MODEL, RES = "mobilenet_v1_025", 64
DEFAULT_CPU = "cortex-a76"
SLOW_CPUS = "cortex-a53,cortex-a55,cortex-a76,cortex-a710,neoverse-v1"
# Trained checkpoints (tests/fixtures/trained/, 64 px): synthetic weights put int8 below its row
# (V3-Small 8.8 dB, V4 Conv-S 6.3 dB against float), which says nothing about ARM.
SLOW_MODELS = {
    "mobilenet_v2_100": "mobilenet_v2_100_photos_64",  # the V2 0.35 digit model, shown photos, is off its data
    "mobilenet_v3_small_100": "mobilenet_v3_small_100_photos_64",
    "mobilenet_v4_conv_small": "mobilenet_v4_conv_small_photos_64",
}


def _kit_or_skip():
    try:
        return find_kit()
    except ArmSetupError as exc:
        pytest.skip(f"ARM emulation kit not set up ({exc}); run `mobile-export setup-arm` (ci-arm-setup.sh)")


@pytest.fixture(scope="module")
def kit():
    return _kit_or_skip()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("arm")


@pytest.fixture(scope="module")
def photos(work):
    return photo_folder(work / "photos", unreadable=0)


def export(work: Path, photos: Path, name: str, res: int, quantize: str, weights: Path | None = None) -> Path:
    from mobile_export.pipeline import ExportRequest, run_export
    from mobile_export.targets import ExportOptions

    out = work / f"{name}_{res}_{quantize}"
    if not out.exists():
        weights = weights or write_weights(name, res, work)
        run_export(
            ExportRequest(
                model=name,
                target="executorch",
                out=out,
                weights=str(weights),
                resolution=res,
                force=True,
                verify=False,
                options=ExportOptions(quantize=quantize, calibration=photos if quantize == "int8" else None),
            )
        )
    return next(out.glob("*.pte"))


# Trained on the 17-way photo task (crops of the bundled photos, 64 px): synthetic weights give
# int8 files below the int8 row (V1 0.25: 13.6 dB vs float), which says nothing about ARM.
TRAINED_V1 = (
    Path(__file__).resolve().parent / "fixtures" / "trained" / "mobilenet_v1_050_photos_64.safetensors"
)


@pytest.fixture(scope="module")
def small(kit, work, photos):
    return {q: export(work, photos, "mobilenet_v1_050", 64, q, weights=TRAINED_V1) for q in ("none", "int8")}


def _copy(pte: Path, dest: Path) -> Path:
    shutil.copytree(pte.parent, dest)
    return dest / pte.name


def _repin(pte: Path) -> None:
    """Keep the manifest's sha256 and size consistent with a changed file."""
    from mobile_export import manifest as mf

    manifest = json.loads((pte.parent / mf.FILENAME).read_text())
    for entry in manifest["artifacts"]:
        if entry["file"] == pte.name:
            entry.update(mf.artifact_record(pte))
    (pte.parent / mf.FILENAME).write_text(json.dumps(manifest, indent=2))


def change_weights(pte: Path) -> None:
    """Negate one mid-network layer's stored weights (fp32 values, or int8 values but never
    their scales: XNNPACK refuses a negative scale when it loads the program, which would test
    the loader, not the comparison), as the mutation suite does; then make the manifest agree."""
    from mutation_helpers import edit_pte_layer

    edit_pte_layer(pte, "layer_sign_flipped")
    _repin(pte)


def fake_runner(directory: Path, source: str) -> Path:
    """An aarch64 program standing in for the runner (compiled with the kit's cross compiler)."""
    from mobile_export.executorch.arm.kit import CROSS_CXX

    gcc = shutil.which(CROSS_CXX.replace("g++", "gcc"))
    if not gcc:
        pytest.skip("no aarch64 cross compiler")
    src, binary = directory / "fake.c", directory / "fake_runner"
    src.write_text(source)
    subprocess.run([gcc, "-O1", str(src), "-o", str(binary)], check=True)
    return binary


# --- without the kit ---------------------------------------------------------------------


def test_cpu_table_names_each_kernel_family():
    assert {c.family for c in CPUS.values()} == {"neon", "sdot", "i8mm"}
    assert [c.name for c in parse_cpus("cortex-a55, cortex-a76,cortex-a55")] == ["cortex-a55", "cortex-a76"]
    assert CPUS["cortex-a53"].family == "neon" and CPUS["cortex-a710"].family == "i8mm"
    with pytest.raises(UsageError, match="cortex-a99.*choose from cortex-a53"):
        parse_cpus("cortex-a76,cortex-a99")


def test_unknown_cpu_is_a_usage_error_listing_the_choices(cli, tmp_path):
    code, _out, err = cli("verify", tmp_path / "x.pte", "--cpu", "cortex-a9000")
    assert code == 2 and "unknown --cpu cortex-a9000" in err and "cortex-a710" in err


@pytest.mark.parametrize("target", ["coreml", "executorch-coreml"])
def test_only_xnnpack_pte_files_run_on_emulated_cpus(target):
    """ARM emulation is the XNNPACK .pte target's (Target.cpu_emulation); a Core ML file, or a
    .pte whose payload is Core ML, is refused in one line before anything slow runs."""
    from mobile_export.targets import get_target
    from mobile_export.verify.verify import _arm_kit

    assert get_target(target).cpu_emulation() is None
    with pytest.raises(UsageError, match="is not one"):
        _arm_kit(get_target(target), Path("model.mlpackage"))
    assert get_target("executorch").cpu_emulation().parse_cpus("cortex-a55")[0].name == "cortex-a55"


def test_missing_kit_is_one_line_naming_the_fix(cli, tmp_path, monkeypatch, small_any):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "empty"))
    with pytest.raises(ArmSetupError, match="setup-arm"):
        find_kit()
    code, _out, err = cli("verify", small_any, "--cpu", DEFAULT_CPU)
    lines = [ln for ln in err.splitlines() if ln.startswith("Error")]
    assert code == 1 and len(lines) == 1 and "mobile-export setup-arm" in lines[0]


def test_kit_state_is_checked_piece_by_piece(tmp_path, monkeypatch):
    """find_kit never fetches: each missing or stale piece is one line that says run setup-arm."""
    from mobile_export.executorch.arm.kit import (
        STATE_FILE,
        installed_executorch,
        qemu_version,
        runner_stamp,
    )

    home = tmp_path / "kit"
    (home / "sysroot" / "lib").mkdir(parents=True)
    qemu = home / "qemu-aarch64"
    qemu.write_text("#!/bin/sh\necho 'qemu-aarch64 version 7.2.0 (Debian 1:7.2+dfsg-7)'\n")
    qemu.chmod(0o755)
    runner = home / "et_run"
    runner.write_text("")
    version = installed_executorch()
    state = {
        "home": str(home),
        "qemu": str(qemu),
        "sysroot": str(home / "sysroot"),
        "runner": str(runner),
        "qemu_version": "10.0.0",
        "executorch_version": version,
        "runner_stamp": runner_stamp(version),
    }
    (home / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(ArmSetupError, match="arm64 sysroot is missing.*setup-arm"):
        find_kit(home)
    (home / "sysroot" / "lib" / "ld-linux-aarch64.so.1").write_text("")
    assert find_kit(home).runner == runner
    (home / STATE_FILE).write_text(json.dumps({**state, "executorch_version": "0.0.1"}))
    with pytest.raises(ArmSetupError, match=f"built for executorch 0.0.1.*{version} is installed.*setup-arm"):
        find_kit(home)
    (home / STATE_FILE).write_text("{not json")
    with pytest.raises(ArmSetupError, match="damaged"):
        find_kit(home)
    assert qemu_version(qemu) == (7, 2, 0)  # setup-arm replaces a cached QEMU older than 10


def _judged_row(arm, ref, x86, qref, scale):
    """verify/arm.arm_rows on one CPU whose emulated outputs are `arm`, under the int8 row."""
    from types import SimpleNamespace

    from mobile_export.verify import thresholds
    from mobile_export.verify.arm import arm_rows

    class Outputs:  # the CpuEmulation's one method arm_rows calls
        def run_on_cpu(self, kit, path, inputs, cpu):
            return arm

    key = "int8/pt2e-int8"
    limits = dict(thresholds.THRESHOLDS[key])
    kit = SimpleNamespace(qemu_version="10.0", executorch_version="test")
    result = arm_rows(
        Path("m.pte"),
        [None] * len(ref),
        ref,
        x86,
        parse_cpus(DEFAULT_CPU),
        key,
        limits,
        qref=qref,
        scale=scale,
        emulation=Outputs(),
        kit=kit,
    )
    (row,) = result["rows"]
    assert result["failures"] == row["failures"]
    return row, limits


def test_an_arm_only_divergence_fails_against_x86_and_one_outlier_does_not():
    """The ARM row is judged by the same book as x86 verify: a requantization error the ARM
    kernels alone make (10 steps on 2% of the outputs, still within the float bar) fails
    against x86 and the quantized model; one 20-step outlier in 11000 outputs passes, as the
    row's step limit is a p99.9, never a maximum over the set (thresholds.py)."""
    from mobile_export.verify import metrics

    rng = np.random.default_rng(0)
    ref = rng.normal(0.0, 2.0, (11, 1000)).astype(np.float32)
    ref[np.arange(11), np.arange(11)] += 12.0  # a clear top-1 per image
    scale = 0.05
    qref = (np.round(ref / scale) * scale).astype(np.float32)  # the quantized model's outputs
    x86 = qref.copy()  # x86 XNNPACK matches the quantized model

    row, _ = _judged_row(x86.copy(), ref, x86, qref, scale)
    assert row["passed"] and row["bit_exact_vs_x86"] and row["vs_x86"]["steps"] == 0, row

    outlier = x86.copy()
    outlier[3, 500] += 20 * scale
    row, limits = _judged_row(outlier, ref, x86, qref, scale)
    assert metrics.error_in_steps(x86, outlier, scale) == pytest.approx(20, abs=1e-3)  # the max
    assert row["passed"] and not row["bit_exact_vs_x86"], row["failures"]
    assert row["vs_x86"]["steps"] < limits["steps_vs_quantized"]

    diverged = x86.copy()
    hit = rng.random(diverged.shape) < 0.02
    diverged[hit] += 10 * scale * rng.choice([-1.0, 1.0], size=int(hit.sum()))
    row, limits = _judged_row(diverged, ref, x86, qref, scale)
    assert row["vs_float"]["sqnr_db"] >= limits["sqnr_db"]  # within the float bar ...
    assert row["vs_float"]["top1_agreement"] == 1.0
    assert not row["passed"]  # ... yet caught against x86 and the quantized model
    against_x86 = [f for f in row["failures"] if "vs the x86 runtime" in f]
    assert against_x86 and all(f.startswith(f"{DEFAULT_CPU}: ") for f in row["failures"])
    assert any("p99.9 error vs the x86 runtime 10" in f for f in against_x86), against_x86
    assert not any("vs float" in f for f in row["failures"]), row["failures"]


def test_bench_refuses_core_ml_files_before_looking_for_the_kit(cli, tmp_path, monkeypatch, small_any):
    """bench --cpu, like verify --cpu, refuses a .mlpackage and a .pte whose payload is Core ML
    in one line (usage error, exit 2), before the kit or anything slow."""
    from mobile_export import manifest as mf

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "no-kit"))
    core_ml_pte = _copy(small_any, tmp_path / "delegate")
    doc = json.loads((core_ml_pte.parent / mf.FILENAME).read_text())
    for entry in doc["artifacts"]:
        entry["target"] = "executorch-coreml"
    (core_ml_pte.parent / mf.FILENAME).write_text(json.dumps(doc, indent=2))
    for path in (tmp_path / "model.mlpackage", core_ml_pte):
        code, out, err = cli("bench", small_any, path, "--cpu", DEFAULT_CPU)
        lines = [ln for ln in err.splitlines() if ln.startswith("Error")]
        assert code == 2 and out == "" and len(lines) == 1, (code, err)
        assert f"{path.name} is not one" in lines[0] and "setup-arm" not in err


@pytest.fixture(scope="module")
def small_any(work, photos):
    """An fp32 .pte that needs no kit (for the missing-kit test)."""
    return export(work, photos, MODEL, RES, "none")


# --- with the kit ------------------------------------------------------------------------


def test_setup_is_idempotent_and_fast_the_second_time(kit):
    from mobile_export.executorch.arm import setup_arm

    result = setup_arm()
    assert result["ready"] and result["fetched"] == []
    assert int(result["kit"]["qemu_version"].split(".")[0]) >= 10  # 7.2 mis-emulates SME
    assert result["seconds"] < 30


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_fp32_and_int8_match_pytorch_and_x86_on_an_emulated_phone_cpu(small, quantize):
    from mobile_export.verify import format_report, verify_artifact

    report = verify_artifact(small[quantize], cpus=parse_cpus(DEFAULT_CPU))  # all 11 bundled photos
    # outputs depend on the input (verify would fail otherwise); the only warning allowed is the
    # contract of the synthetic checkpoint file being assumed
    assert report["input_dependence"]["sqnr_db_vs_own_mean"] < report["input_dependence"]["limit_db"]
    assert all("contract was assumed" in w for w in report["warnings"]), report["warnings"]
    (row,) = report["arm"]["rows"]
    assert row["cpu"] == DEFAULT_CPU and row["kernels"] == "sdot"
    assert row["passed"] and report["passed"], report["failures"]
    limit = 60.0 if quantize == "none" else 20.0
    assert row["vs_x86"]["sqnr_db"] >= limit and row["vs_x86"]["images"] == report["images"]["count"] == 11
    # ARM against PyTorch is as good as x86 against PyTorch, within a dB
    assert (
        abs(row["vs_float"]["sqnr_db"] - report["vs_float"]["sqnr_db"]) < 1.0
        or row["vs_float"]["sqnr_db"] > 100
    )
    assert f"{DEFAULT_CPU:<12}sdot  ok" in format_report(report)


def test_changed_weights_fail_on_every_cpu(small, work):
    from mobile_export.verify import verify_artifact

    pte = _copy(small["none"], work / "mutated")
    change_weights(pte)
    report = verify_artifact(pte, cpus=parse_cpus(DEFAULT_CPU), limit=4)
    assert not report["passed"]
    for row in report["arm"]["rows"]:
        assert not row["passed"] and any("SQNR vs float" in f for f in row["failures"]), row
        assert row["vs_float"]["sqnr_db"] < 20


def test_truncated_pte_is_an_error_not_a_pass(kit, small, tmp_path):
    from mobile_export.executorch.arm.emulate import run_on_cpu

    pte = tmp_path / "truncated.pte"
    pte.write_bytes(small["none"].read_bytes()[:20000])
    with pytest.raises(
        EmulationError, match=rf"{DEFAULT_CPU}: the runner exited 4 \(the program did not load\)"
    ):
        run_on_cpu(kit, pte, [np.zeros((1, 3, RES, RES), np.float32)], CPUS[DEFAULT_CPU])


def test_a_failing_runner_fails_verify_with_an_error_row(kit, small, work, tmp_path, monkeypatch, cli):
    runner = fake_runner(tmp_path, "int main(void) { return 1; }\n")
    monkeypatch.setenv(RUNNER_ENV, str(runner))
    code, out, err = cli("verify", small["int8"], "--cpu", DEFAULT_CPU, "--limit", "2", "--json")
    report = json.loads(out)
    (row,) = report["arm"]["rows"]
    assert code == 1 and not report["passed"] and not row["passed"]
    assert "runner exited 1" in row["error"] and "runner exited 1" in err


def test_a_crashing_or_hanging_runner_is_an_error(kit, small, tmp_path, monkeypatch):
    from dataclasses import replace

    from mobile_export.executorch.arm.emulate import run_on_cpu

    source = (
        "#include <signal.h>\n#include <stdlib.h>\n#include <unistd.h>\n"
        'int main(void) { if (getenv("HANG")) sleep(60); raise(SIGSEGV); return 0; }\n'
    )
    fake = fake_runner(tmp_path, source)
    fake_kit = replace(kit, runner=fake)
    image = [np.zeros((1, 3, RES, RES), np.float32)]
    with pytest.raises(EmulationError, match="crashed under QEMU"):
        run_on_cpu(fake_kit, small["none"], image, CPUS[DEFAULT_CPU])
    monkeypatch.setenv("HANG", "1")  # QEMU passes the environment to the guest
    with pytest.raises(EmulationError, match="did not finish in 2 s"):
        run_on_cpu(fake_kit, small["none"], image, CPUS[DEFAULT_CPU], timeout=2)


def test_a_failing_count_or_a_missing_emulator_is_an_error(kit, small, tmp_path):
    """bench's counting run fails like verify's run: a runner that dies mid-log or an emulator
    that cannot start is an EmulationError, never a count."""
    from dataclasses import replace

    from mobile_export.executorch.arm.emulate import (
        count_instructions,
        instructions_per_inference,
        run_on_cpu,
    )

    crashing = replace(
        kit, runner=fake_runner(tmp_path, "#include <signal.h>\nint main(void) { raise(SIGSEGV); }\n")
    )
    image = np.zeros((1, 3, RES, RES), np.float32)
    with pytest.raises(EmulationError, match=rf"{DEFAULT_CPU}: the runner crashed under QEMU \(SIGSEGV\)"):
        count_instructions(crashing, small["int8"], image, CPUS[DEFAULT_CPU], repeat=1)
    with pytest.raises(EmulationError, match="crashed under QEMU"):
        instructions_per_inference(crashing, small["int8"], image, CPUS[DEFAULT_CPU])
    no_qemu = replace(kit, qemu=tmp_path / "no-such-qemu")
    for call in (
        lambda: run_on_cpu(no_qemu, small["int8"], [image], CPUS[DEFAULT_CPU]),
        lambda: count_instructions(no_qemu, small["int8"], image, CPUS[DEFAULT_CPU], repeat=1),
    ):
        with pytest.raises(EmulationError, match=f"{DEFAULT_CPU}: cannot start QEMU"):
            call()


def test_instruction_count_repeats_and_shows_the_kernel_family(kit, small):
    from mobile_export.executorch.arm.emulate import instructions_per_inference

    image = np.random.default_rng(0).random((1, 3, RES, RES), dtype=np.float32)
    count = instructions_per_inference(kit, small["int8"], image, CPUS[DEFAULT_CPU])
    assert count["instructions"] > 100_000
    assert count["relative_difference"] < 1e-3, count["measurements"]
    kernels = count["kernel_instructions"]
    assert kernels["sdot"] > 0 and kernels["smmla"] == 0 and kernels["smlal2"] == 0, kernels


def test_bench_cli_counts_and_gives_the_int8_fp32_ratio(kit, small, cli):
    code, out, _err = cli("bench", small["int8"], small["none"], "--cpu", DEFAULT_CPU, "--json")
    assert code == 0
    result = json.loads(out)
    assert "not a time" in result["what"]
    (ratio,) = result["int8_vs_fp32"]
    counts = {f["precision"]: f["cpus"][0]["instructions"] for f in result["files"]}
    assert ratio["ratio"] == pytest.approx(counts["int8"] / counts["fp32"], abs=1e-4)
    assert result["files"][1]["cpus"][0]["kernel_instructions"]["fmla"] > 0  # fp32 kernels ran


def test_docs_table_covers_the_family_and_is_rendered_from_its_results():
    """docs/arm.md's table: V1-V4 x {a55, a76, a710} x {fp32, int8}, each cell with its parity
    row, a repeatable instruction count and its kernel family's instructions; the table in the
    page is exactly scripts/arm_table.py's rendering of docs/arm_table.json."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("arm_table", root / "scripts" / "arm_table.py")
    arm_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(arm_table)
    results = json.loads(arm_table.RESULTS.read_text())
    doc = arm_table.DOC.read_text()
    table = doc.split(arm_table.START, 1)[1].split(arm_table.END, 1)[0]
    assert table.strip() == arm_table.render(results).strip()
    own = {"sdot": "sdot", "i8mm": "smmla"}
    for alias in ("v1-050", "v2", "v3-small", "v4-conv-small"):
        for precision in ("fp32", "int8"):
            cell = results[f"{alias}@96/{precision}"]
            assert cell["precision"] == precision
            for cpu in ("cortex-a55", "cortex-a76", "cortex-a710"):
                row, count = cell["arm"][cpu], cell["counts"][cpu]
                assert "error" not in row and row["kernels"] == CPUS[cpu].family
                assert {"vs_float", "vs_x86"} <= set(row)
                assert count["instructions"] > 1_000_000 and count["relative_difference"] < 1e-3
                kernels = count["kernel_instructions"]
                assert kernels["fmla"] > 0 if precision == "fp32" else kernels[own[row["kernels"]]] > 0


# --- slow: more CPUs and models ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_MODELS))
@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_family_on_every_kernel_generation(kit, work, photos, name, quantize):
    from mobile_export.verify import verify_artifact

    weights = Path(__file__).resolve().parent / "fixtures" / "trained" / f"{SLOW_MODELS[name]}.safetensors"
    pte = export(work, photos, name, 64, quantize, weights=weights)
    report = verify_artifact(pte, cpus=parse_cpus(SLOW_CPUS), limit=6)
    assert not report["warnings"]
    assert [r["cpu"] for r in report["arm"]["rows"]] == SLOW_CPUS.split(",")
    assert report["passed"], report["failures"]


@pytest.mark.slow
def test_changed_weights_fail_on_every_generation(kit, small, work):
    from mobile_export.verify import verify_artifact

    for quantize in ("none", "int8"):
        pte = _copy(small[quantize], work / f"mutated_all_{quantize}")
        change_weights(pte)
        report = verify_artifact(pte, cpus=parse_cpus(SLOW_CPUS), limit=4)
        assert len(report["arm"]["rows"]) == len(SLOW_CPUS.split(","))
        assert all(not row["passed"] for row in report["arm"]["rows"]), report["arm"]["rows"]


@pytest.mark.slow
def test_each_generation_runs_its_own_int8_kernels(kit, small):
    from mobile_export.executorch.arm.emulate import instructions_per_inference

    image = np.random.default_rng(0).random((1, 3, RES, RES), dtype=np.float32)
    # each family's own int8 instruction, and none of the other families' dot/matrix instructions
    # (a few smlal run on every CPU: kernels outside the dot-product paths)
    own = {"neon": "smlal", "sdot": "sdot", "i8mm": "smmla"}
    absent = {"neon": ("sdot", "smmla"), "sdot": ("smmla",), "i8mm": ("sdot",)}
    for cpu in parse_cpus(SLOW_CPUS + ",cortex-a72,neoverse-n1"):
        kernels = instructions_per_inference(kit, small["int8"], image, cpu)["kernel_instructions"]
        assert kernels[own[cpu.family]] > 0, (cpu.name, kernels)
        assert all(kernels[m] == 0 for m in absent[cpu.family]), (cpu.name, kernels)
