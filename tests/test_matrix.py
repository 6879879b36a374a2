"""The family x format matrix on a real slice: cells are real runs of the CLI (files on disk,
metrics read back from the manifests they wrote), the cache resumes without rerunning, a
crashing backend is a recorded cell and the run goes on, and the diff flags a format that
stopped lowering and a parity drop."""

from __future__ import annotations

import copy
import json
import signal
import sys

import pytest

from mobile_export.matrix import MatrixRequest, run_matrix
from mobile_export.matrix import cells as cells_mod
from mobile_export.matrix.report import diff, markdown, write_outputs

pytest.importorskip("executorch")
pytest.importorskip("coremltools")

SLICE = dict(models=["v1-025"], formats=["et-fp32", "coreml-fp16"], resolution=32, bench_runs=2)
SLICE_ARGS = ("--models", "v1-025", "--formats", "et-fp32,coreml-fp16", "--resolution", 32)  # as CLI options


@pytest.fixture(scope="module")
def slice_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("matrix")
    doc = run_matrix(MatrixRequest(out=out, **SLICE))
    return out, doc


def test_cells_are_real_runs(slice_run):
    out, doc = slice_run
    rows = {r["format"]: r for r in doc["cells"]}
    assert list(rows) == ["et-fp32", "coreml-fp16"]
    for fmt, row in rows.items():
        assert row["lowered"] and row["exit_code"] == 0, row
        manifest = json.loads((out / "work" / "mobilenet_v1_025" / fmt / "manifest.json").read_text())
        entry = manifest["artifacts"][0]
        # The row's numbers are the ones verify wrote for that file, not made up here.
        assert row["bytes"] == entry["bytes"] and row["artifact"] == entry["file"]
        assert row["parity"]["sqnr_db"] == entry["parity"]["vs_float"]["sqnr_db"]
        assert row["passed"] == entry["parity"]["passed"]
        assert row["peak_rss_mb"] > 100  # torch alone is more than that: the child really ran
    fp32 = rows["et-fp32"]
    assert (
        out / "work" / "mobilenet_v1_025" / "et-fp32" / fp32["artifact"]
    ).is_file()  # kept as the baseline
    assert fp32["delegated_ops"] > 0 and fp32["outside_ops"] == 0
    assert fp32["latency_ms"] > 0 and fp32["latency_ratio"] == 1.0
    assert "latency_ms" not in rows["coreml-fp16"]  # Core ML cannot run here: no made-up time
    assert not (out / "work" / "mobilenet_v1_025" / "coreml-fp16" / rows["coreml-fp16"]["artifact"]).exists()


def test_a_rerun_reads_the_cache(slice_run):
    out, doc = slice_run
    again = run_matrix(MatrixRequest(out=out, **SLICE))
    assert again["cells"] == doc["cells"]
    assert again["wall_seconds"] < 20  # no export ran (each takes longer than that)


def test_tables_and_published_page(slice_run, tmp_path):
    out, doc = slice_run
    page = tmp_path / "matrix.md"
    page.write_text("# Matrix\n\nintro\n\n<!-- matrix:begin -->\nSTALE TABLE\n<!-- matrix:end -->\n\nafter\n")
    write_outputs(doc, out, publish=page)
    text = page.read_text()
    assert "intro" in text and "after" in text and "STALE TABLE" not in text
    # the slice ran below the model's own size, and the table says so
    assert "| mobilenet_v1_025 | 32 (own 224) | synthetic |" in text and doc["versions"]["executorch"] in text
    assert (tmp_path / "matrix.html").read_text().count("<td") == 4  # size, weights and two cells
    assert markdown(doc) in text


def test_diff_flags_lowering_and_parity_changes(slice_run):
    _, doc = slice_run
    old = copy.deepcopy(doc)
    new = copy.deepcopy(doc)
    fp16_old = next(r for r in old["cells"] if r["format"] == "coreml-fp16")
    fp16_old["parity"]["sqnr_db"] += 10.0  # a previous run that was 10 dB closer
    fp32_new = next(r for r in new["cells"] if r["format"] == "et-fp32")
    fp32_new.update(lowered=False, status="not lowered", reason="ExportError: something broke")
    lines = diff(old, new)
    assert any("et-fp32: stopped lowering" in line and "something broke" in line for line in lines), lines
    assert any("coreml-fp16: SQNR vs PyTorch" in line and "(-10.0)" in line for line in lines), lines
    assert diff(doc, doc) == []


def test_diff_through_the_cli(slice_run, tmp_path, cli):
    out, doc = slice_run
    old = copy.deepcopy(doc)
    next(r for r in old["cells"] if r["format"] == "et-fp32")["latency_ratio"] = 2.0
    (tmp_path / "old.json").write_text(json.dumps(old))
    code, stdout, _ = cli(
        "matrix",
        *SLICE_ARGS,
        "--bench-runs",
        2,
        "--out",
        out,
        "--against",
        tmp_path / "old.json",
    )
    assert code == 0
    assert "changes against" in stdout and "et-fp32: latency vs fp32 .pte 2.00x -> 1.00x" in stdout


EARLIER = "0.1.0+0123456789abcdef"  # a code version that is not this one


def _as_if_made_by(out, earlier: str) -> None:
    """Re-key every cached cell under `out` as if code `earlier` had made it."""
    from mobile_export.matrix.run import plan

    jobs, about = plan(MatrixRequest(out=out, **SLICE))
    for cell in jobs[0].cells:
        path = out / "cells" / cell.model / f"{cell.format}.json"
        row = json.loads(path.read_text())
        row["key"] = cell.cache_key(about["versions"], earlier)
        path.write_text(json.dumps(row))


def test_cells_of_earlier_code_count_only_when_accepted(slice_run, tmp_path, cli):
    """A code change invalidates the cache; --accept-code names earlier code whose cells may
    still be tabulated (each row says so), and --cached-only runs nothing."""
    import shutil

    source, doc = slice_run
    out = tmp_path / "cache"
    shutil.copytree(source / "cells", out / "cells")
    _as_if_made_by(out, EARLIER)

    nothing = run_matrix(MatrixRequest(out=out, cached_only=True, **SLICE))
    assert [r["status"] for r in nothing["cells"]] == ["not run", "not run"]
    assert not (out / "work").exists()  # nothing was exported
    assert "2 cell(s) not run" in markdown(nothing) and "| not run | not run |" in markdown(nothing)
    assert diff(doc, nothing) == []  # a cell that did not run is not a change

    accepted = run_matrix(MatrixRequest(out=out, cached_only=True, accept_code=(EARLIER,), **SLICE))
    assert [r["code"] for r in accepted["cells"]] == [EARLIER, EARLIER]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("code", "key")} for r in rows]  # noqa: E731
    assert strip(accepted["cells"]) == strip(doc["cells"])
    table = markdown(accepted)
    assert f"accepted with --accept-code: 2 by code {EARLIER}; 0 by code {accepted['code']}." in table
    assert f"(code {EARLIER})" in table

    # the code is the only part of the key it relaxes: other options still miss the cache
    other = dict(SLICE, resolution=48)
    missed = run_matrix(MatrixRequest(out=out, cached_only=True, accept_code=(EARLIER,), **other))
    assert [r["status"] for r in missed["cells"]] == ["not run", "not run"]

    page = tmp_path / "page.md"
    code, _, _ = cli(
        "matrix",
        *SLICE_ARGS,
        "--out",
        out,
        "--cached-only",
        "--accept-code",
        EARLIER,
        "--publish",
        page,
    )
    assert code == 0
    assert f"(code {EARLIER})" in page.read_text() and not (out / "work").exists()


def test_a_crashing_cell_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    real = cells_mod.cell_command

    def crash_fp16(spec, out):
        if spec.format == "coreml-fp16":
            return [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
        return real(spec, out)

    monkeypatch.setattr(cells_mod, "cell_command", crash_fp16)
    doc = run_matrix(
        MatrixRequest(
            out=tmp_path,
            models=["v1-025"],
            formats=["coreml-fp16", "coreml-fp32"],
            resolution=32,
            bench_runs=1,
        )
    )
    rows = {r["format"]: r for r in doc["cells"]}
    assert rows["coreml-fp16"]["status"] == "crashed" and signal.SIGSEGV.name in rows["coreml-fp16"]["reason"]
    assert rows["coreml-fp32"]["lowered"] is True  # the next cell still ran


def test_per_model_resolutions():
    """`--resolution N` for all, `--resolution MODEL=N` for the named ones (aliases and globs)."""
    from mobile_export.errors import UsageError
    from mobile_export.matrix.run import parse_resolutions, plan

    one, per_model = parse_resolutions(["96", "v5-*=128", "mobilenet_v4_conv_large=160"])
    assert one == 96 and per_model == {"v5-*": 128, "mobilenet_v4_conv_large": 160}
    jobs, _ = plan(
        MatrixRequest(
            models=["v1-025", "v5-*", "v4-conv-large", "v2"],
            formats=["et-fp32"],
            model_resolutions=per_model,
        )
    )
    sizes = {job.model: job.cells[0].resolution for job in jobs}
    assert sizes == {
        "mobilenet_v1_025": 224,  # its own: no "N" given here
        "mobilenet_v2_100": 224,
        "mobilenet_v4_conv_large": 160,
        "mobilenet_v5_300m": 128,
        "mobilenet_v5_base": 128,
    }
    for bad, says in (
        ("v5-300m=abc", "MODEL=N"),
        ("16", "from 32 to 4096"),
        ("resnet=128", "matches no variant"),
    ):
        with pytest.raises(UsageError, match=says):
            parse_resolutions([bad])


def test_per_model_weights_key_the_cache_by_content(tmp_path):
    """`--weights MODEL=FILE`: that model's cells load the checkpoint (its sha256 is in the cache
    key, so a retrained file is a new cell); the others keep the synthetic weights."""
    from mobile_export.errors import UsageError
    from mobile_export.matrix.run import parse_weights, plan

    ckpt = tmp_path / "v2.safetensors"
    ckpt.write_bytes(b"one")
    one, per_model = parse_weights([f"v2={ckpt}"])
    request = MatrixRequest(models=["v1-025", "v2"], formats=["et-fp32"], model_weights=per_model)
    jobs, _ = plan(request)
    cells = {job.model: job.cells[0] for job in jobs}
    assert one is None and cells["mobilenet_v1_025"].weights == "random"
    assert (
        cells["mobilenet_v2_100"].weights == str(ckpt.resolve()) and cells["mobilenet_v2_100"].weights_sha256
    )
    before = {job.model: job.keys[0] for job in jobs}
    ckpt.write_bytes(b"two")
    after = {job.model: job.keys[0] for job in plan(request)[0]}
    assert after["mobilenet_v1_025"] == before["mobilenet_v1_025"]
    assert after["mobilenet_v2_100"] != before["mobilenet_v2_100"]
    with pytest.raises(UsageError, match="existing checkpoint file"):
        parse_weights([f"v2={tmp_path / 'missing.safetensors'}"])


def test_unknown_format_or_model_is_a_usage_error(cli, tmp_path):
    code, _, err = cli("matrix", "--formats", "tflite", "--out", tmp_path)
    assert code == 2 and "matches nothing" in err and "et-fp32" in err
    code, _, err = cli("matrix", "--models", "resnet*", "--out", tmp_path)
    assert code == 2 and "matches no variant" in err
    code, _, err = cli("matrix", "--resolution", "v5-300m=huge", "--out", tmp_path)
    assert code == 2 and "--resolution 'v5-300m=huge'" in err and len(err.strip().splitlines()) == 1
