"""verify --per-layer on an fp32 .pte: per-op rows from the real ExecuTorch runtime, via the
per-op twin of the .pte (one XNNPACK delegate per op, ETDump + debug buffer, Inspector).

One small real export (V1 0.25 at 64 px, well-conditioned synthetic weights, bundled photos);
the mutation test perturbs one weight of the AOT reference and checks that exactly that op's
row shows the damage entering."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest
from et_helpers import write_weights

from mobile_export.pipeline import ExportRequest, run_export
from mobile_export.targets import ExportOptions

NAME, RES = "mobilenet_v1_025", 64
IMAGES = 3


@pytest.fixture(scope="module")
def fp32_pte(tmp_path_factory):
    work = tmp_path_factory.mktemp("pl_fp32")
    weights = write_weights(NAME, RES, work)
    manifest = run_export(
        ExportRequest(
            model=NAME,
            target="executorch",
            out=work / "out",
            weights=str(weights),
            resolution=RES,
            force=True,
            verify=False,
            options=ExportOptions(),
        )
    )
    entry = next(a for a in manifest["artifacts"] if a["format"] == "pte")
    return work / "out" / entry["file"], entry


@pytest.fixture(scope="module")
def verified(fp32_pte, tmp_path_factory):
    """verify --per-layer, keeping the twin's ETRecord and dumps for the mutation test."""
    from mobile_export.executorch.etdump import KEEP_ENV
    from mobile_export.verify import verify_artifact

    lines: list[str] = []
    kept = tmp_path_factory.mktemp("twin")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEEP_ENV, str(kept))
        report = verify_artifact(
            fp32_pte[0],
            limit=IMAGES,
            per_layer=True,
            report_dir=tmp_path_factory.mktemp("pl_report"),
            log=lines.append,
        )
    return report, lines, kept


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_fp32_per_op_rows_from_the_runtime(verified):
    report, lines, kept = verified
    pl = report["per_layer"]
    assert pl["source"].startswith("per-op twin"), pl["source"]
    files = {k: Path(v) for k, v in pl["files"].items()}
    assert all(p.exists() and p.stat().st_size > 0 for p in files.values())
    rows = _csv_rows(files["csv"])
    ops = [r for r in rows if r["name"] != "runtime"]
    assert len(ops) > 20 and pl["layers"] == len(rows) == len(ops) + 1
    for r in rows:
        for field in ("sqnr_db", "max_abs", "cosine"):
            assert math.isfinite(float(r[field])), r
    sqnr = [float(r["sqnr_db"]) for r in ops]
    assert min(sqnr) > 60.0, min(sqnr)  # fp32 XNNPACK kernels vs PyTorch, op by op
    assert all(float(r["cosine"]) > 0.999999 for r in ops)
    kinds = {r["op"] for r in ops}
    assert {"conv2d", "linear"} <= kinds
    assert any(r["module"].startswith("blocks.") for r in ops)  # module paths in the model's own names
    # sorted by loss, the whole-program row (no loss) last, carrying the shipped .pte's metrics
    losses = [float(r["sqnr_loss_db"]) for r in rows if r["sqnr_loss_db"]]
    assert losses == sorted(losses, reverse=True) and len(losses) == len(ops)
    assert rows[-1]["name"] == "runtime"
    assert float(rows[-1]["sqnr_db"]) == pytest.approx(min(report["vs_float"]["sqnr_db"], 300.0), abs=1e-3)
    md, page = files["markdown"].read_text(), files["html"].read_text()
    assert "per-op twin of the .pte" in md and "conv2d" in md
    assert "<svg" in page and "per-op twin of the .pte" in page
    assert any("per-layer report" in line for line in lines)
    assert sorted(p.name for p in (kept / "etdump").glob("etdump_*.etdp")) == [
        f"etdump_{i}.etdp" for i in range(IMAGES)
    ]


def test_per_op_rows_have_teeth(fp32_pte, verified):
    """One weight of one conv perturbed in the AOT reference (the twin's ETRecord), runtime
    dump unchanged: that conv becomes the worst row by far, the ops before it do not move."""
    import torch
    from executorch.devtools.etrecord import parse_etrecord

    from mobile_export import manifest as mf
    from mobile_export.executorch.etdump import FP32_EXACT_DB, numeric_gap_values
    from mobile_export.verify.per_layer import collect
    from mobile_export.verify.reference import load_inputs, preprocess_of

    path, _ = fp32_pte
    kept = verified[2]
    feed = load_inputs(None, preprocess_of(mf.manifest_for(path)[0]), IMAGES).raw[
        :1
    ]  # what verify fed image 0 (normalization is in the model)

    def numeric_gap_rows(record, dumps, feed, in_wrapper):
        return collect(
            lambda sink: numeric_gap_values(record, dumps, feed, sink, in_wrapper=in_wrapper), FP32_EXACT_DB
        )[0]

    clean = numeric_gap_rows(kept / "twin.etrecord", kept / "etdump", feed, in_wrapper=True)
    record = parse_etrecord(str(kept / "twin.etrecord"))
    target = "blocks.2.1.conv_pw"
    weight = record.exported_program.state_dict[f"model.{target}.weight"]
    with torch.no_grad():
        weight[0, 0, 0, 0] += 1e-3 * float(weight.abs().max())
    bent = numeric_gap_rows(record, kept / "etdump", feed, in_wrapper=True)

    before = {r.name: r for r in clean}
    assert min(r.sqnr_db for r in clean) > 60.0
    worst = max(bent, key=lambda r: r.sqnr_loss_db)
    assert worst.module == target and worst.op == "conv2d"
    assert worst.sqnr_db < before[worst.name].sqnr_db - 20.0
    assert worst.sqnr_loss_db > 20.0
    upstream = [r for r in bent if r.index < worst.index]
    assert upstream and all(r.sqnr_db == before[r.name].sqnr_db for r in upstream)


def test_fallback_to_the_whole_program_row(fp32_pte, verified, tmp_path):
    """A reference the twin cannot be lowered from: one logged line, the single runtime row."""
    import torch

    from mobile_export import manifest as mf
    from mobile_export.targets import get_target
    from mobile_export.verify.per_layer import per_layer_report
    from mobile_export.verify.reference import load_inputs, rebuild_reference

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x  # torch.export cannot trace a branch on data

    path, entry = fp32_pte
    manifest, _ = mf.manifest_for(path)
    built = dataclasses.replace(rebuild_reference(manifest), module=DataDependent())
    lines: list[str] = []
    inputs = load_inputs(None, built.preprocess, 2)
    pl = per_layer_report(
        path,
        get_target("executorch"),
        entry,
        built,
        inputs,
        None,
        verified[0],
        tmp_path / "fb",
        log=lines.append,
    )
    assert (
        pl["layers"] == 1
        and pl["source"].startswith("per-op twin of")
        and "failed (ExportError" in pl["source"]
    )
    assert sum("failed" in line for line in lines) == 1 and "\n" not in lines[0]
    assert _csv_rows(Path(pl["files"]["csv"]))[0]["name"] == "runtime"
