"""Fuzz: damaged .pte, .mlpackage and checkpoint files through `mobile-export verify`; the CLI
never crashes. Each case gets exit 0 (the damage was harmless and parity still holds) or exit 1
with exactly one `Error:` line, no traceback, and the process lives on to the next case.

The cases run in one worker process that calls the CLI in-process case after case (so a
native crash or a leaked exception would end it, and is reported with the case that did it).
Artifacts are re-pinned in their manifest after damage, so the damage reaches the loaders
(the ExecuTorch runtime in its child process, the Core ML executor and blob reader in the
CLI process, torch.load / safetensors) instead of stopping at the sha256 check.

Default run: a seeded slice of 50 cases. `-m slow`: 1,000 cases, a third of each kind
(FUZZ_CASES overrides the total, FUZZ_PTE_CASES the .pte share, FUZZ_KINDS picks kinds;
FUZZ_REPORT_DIR keeps the per-case results as JSON lines)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from robust_helpers import (
    PKG,
    PTE,
    cli_inprocess,
    copy_export,
    damage_file,
    damage_package,
    error_lines,
    repin,
    shared_export,
)

SEED = 8  # the number; any fixed seed makes every case reproducible
KINDS = ("checkpoint", "mlpackage", "pte")
FAST = {"checkpoint": 24, "mlpackage": 23, "pte": 3}  # the .pte cases each start a runtime child: few here
SLOW_TOTAL = int(os.environ.get("FUZZ_CASES", "1000"))


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Path:
    return shared_export(tmp_path_factory)


# --- one case ------------------------------------------------------------------------------


def _weights_files(export: Path, work: Path) -> dict[str, Path]:
    """The export's checkpoint as .pth (torch zip) and .safetensors."""
    import torch
    from safetensors.torch import save_file

    pth = Path(json.loads((export / "manifest.json").read_text())["model"]["weights"]["path"])
    st = work / "weights.safetensors"
    if not st.exists():
        state = torch.load(pth, map_location="cpu", weights_only=True)
        save_file({k: v.contiguous() for k, v in state.items()}, st)
    return {".pth": pth, ".safetensors": st}


def run_case(kind: str, index: int, export: Path, work: Path) -> dict:
    """Damage one file (seeded by kind and index), verify it through the CLI, classify."""
    rng = np.random.default_rng([SEED, KINDS.index(kind), index])
    case_dir = work / f"{kind}_{index}"
    if case_dir.exists():
        shutil.rmtree(case_dir)
    folder = copy_export(export, case_dir / "export")
    if kind == "checkpoint":
        suffix = [".pth", ".safetensors"][index % 2]
        damaged = case_dir / f"damaged{suffix}"
        shutil.copy(_weights_files(export, work)[suffix], damaged)
        what = f"{suffix} {damage_file(damaged, rng)}"
        args = ["verify", folder / PKG, "--weights", damaged, "--limit", "1"]
    elif kind == "mlpackage":
        what = damage_package(folder / PKG, rng)
        repin(folder / PKG)
        args = ["verify", folder / PKG, "--limit", "1"]
    else:
        what = damage_file(folder / PTE, rng)
        repin(folder / PTE)
        args = ["verify", folder / PTE, "--limit", "1"]
    code, _, err, escaped = cli_inprocess(*args)
    lines = error_lines(err)
    ok = (
        escaped is None
        and "Traceback" not in err
        and ((code == 0 and not lines) or (code == 1 and len(lines) == 1))
    )
    shutil.rmtree(case_dir, ignore_errors=True)
    return {
        "kind": kind,
        "index": index,
        "damage": what,
        "exit": code,
        "ok": ok,
        "error": lines[0][:300] if lines else None,
        "escaped": repr(escaped) if escaped is not None else None,
    }


def worker(export: str, work: str, plan: str) -> None:
    """Entry of the worker process: run every (kind, index) of `plan` (JSON), one JSON line
    per case on stdout, each announced on stderr before it starts."""
    import warnings

    warnings.simplefilter("ignore")
    for kind, index in json.loads(plan):
        sys.stderr.write(f"CASE {kind} {index}\n")
        sys.stderr.flush()
        result = run_case(kind, index, Path(export), Path(work))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


def _run_worker(export: Path, work: Path, plan: list[tuple[str, int]]) -> list[dict]:
    tests_dir = Path(__file__).parent
    code = f"import sys; sys.path.insert(0, {str(tests_dir)!r}); import test_fuzz; test_fuzz.worker(*sys.argv[1:])"
    env = dict(os.environ, MOBILE_EXPORT_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(export), str(work), json.dumps(plan)],
        capture_output=True,
        text=True,
        env=env,
        timeout=6 * 3600,
    )
    results = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    started = [ln for ln in proc.stderr.splitlines() if ln.startswith("CASE ")]
    assert proc.returncode == 0, (
        f"the CLI process died (exit {proc.returncode}) during {started[-1] if started else '?'}; "
        f"{len(results)} case(s) done\n{proc.stderr[-3000:]}"
    )
    assert len(results) == len(plan)
    return results


def _plan(counts: dict[str, int]) -> list[tuple[str, int]]:
    return [(kind, i) for kind in KINDS for i in range(counts[kind])]


def _check(results: list[dict]) -> None:
    bad = [r for r in results if not r["ok"]]
    assert not bad, json.dumps(bad[:5], indent=1)
    for kind in KINDS:
        mine = [r for r in results if r["kind"] == kind]
        if mine:  # the damage must be caught, not only survived: most cases fail
            assert sum(r["exit"] == 1 for r in mine) >= 0.5 * len(mine), (
                kind,
                [r["damage"] for r in mine if r["exit"] == 0],
            )


# --- tests -----------------------------------------------------------------------------------


def test_damage_is_seeded_and_varied(exported, tmp_path):
    """The same (kind, index) damages the same way; different indices differ."""
    descriptions = []
    for i in range(6):
        for _ in range(2):
            folder = copy_export(exported, tmp_path / "e")
            descriptions.append(damage_package(folder / PKG, np.random.default_rng([SEED, 1, i])))
    assert descriptions[0::2] == descriptions[1::2]
    assert len(set(descriptions[0::2])) > 3


def test_fuzz_fast_slice(exported, tmp_path):
    results = _run_worker(exported, tmp_path, _plan(FAST))
    _check(results)


@pytest.mark.slow
def test_fuzz_thousand(exported, tmp_path):
    share = SLOW_TOTAL // len(KINDS)
    counts = {kind: share + (1 if i < SLOW_TOTAL % len(KINDS) else 0) for i, kind in enumerate(KINDS)}
    if os.environ.get("FUZZ_PTE_CASES"):  # each .pte case starts a runtime child (~5-20 s): allow fewer
        counts["pte"] = int(os.environ["FUZZ_PTE_CASES"])
    for kind in KINDS:  # FUZZ_KINDS=mlpackage,pte re-runs only those kinds (same seeds)
        if kind not in os.environ.get("FUZZ_KINDS", ",".join(KINDS)).split(","):
            counts[kind] = 0
    results = _run_worker(exported, tmp_path, _plan(counts))
    (Path(os.environ.get("FUZZ_REPORT_DIR", tmp_path)) / "fuzz_results.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in results)
    )
    _check(results)
