"""The .bpte self-check can fail: one expected output inside the bundled program is edited
in the file's bytes (the manifest's sha256 is updated to match, so the edit reaches the
self-check instead of the sha256 check), and `verify` must report that case as failed.

The expected outputs are the desktop runtime's outputs of the same program (see
`write_bundled`), so on the desktop an intact file always passes; these tests prove that the
comparison inside the runtime is really made, case by case, with the recorded tolerance:
- a wrong value (the top-1 changes) fails exactly that case, and verify fails;
- an edit well inside the recorded tolerance still passes, so what fails above is the value,
  not the byte edit itself (the file still loads and runs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mobile_export import manifest as mf

pytest.importorskip("executorch")

NAME, RES = "mobilenet_v1_050", 64
# trained on the colour photo task (see test_int8_quality.py): every embedded photo gives its
# own logits (synthetic V1 0.25 weights gave exactly the classifier bias on 2 of the 11 photos)
CHECKPOINT = Path(__file__).parent / "fixtures" / "trained" / "mobilenet_v1_050_photos_64.safetensors"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The trained V1 0.5 photo model at 64 px with a .bpte, and the runtime's outputs for the
    3 embedded photos, recomputed the way the exporter did."""
    from mobile_export.executorch.runtime import run_isolated
    from mobile_export.pipeline import ExportRequest, run_export
    from mobile_export.preprocess import default_images
    from mobile_export.targets import ExportOptions
    from mobile_export.verify.reference import preprocess_of

    out = tmp_path_factory.mktemp("bpte") / "export"
    manifest = run_export(
        ExportRequest(
            model=NAME,
            target="executorch",
            out=out,
            weights=str(CHECKPOINT),
            resolution=RES,
            force=True,
            verify=False,
            options=ExportOptions(bundled=True),
        )
    )
    pte_entry = next(a for a in manifest["artifacts"] if a["format"] == "pte")
    bpte_entry = next(a for a in manifest["artifacts"] if a["format"] == "bpte")
    bundled = bpte_entry["export"]["bundled"]
    in_model = pte_entry["input"]["normalized_in_model"]
    inputs = default_images(preprocess_of(manifest), normalized=not in_model).inputs
    expected = run_isolated(out / pte_entry["file"], inputs[: bundled["cases"]])
    outs = [expected[f"out{i}"] for i in range(bundled["cases"])]
    assert min(np.abs(a - b).max() for i, a in enumerate(outs) for b in outs[i + 1 :]) > 0.1  # distinct cases
    return {"dir": out, "bpte": out / bpte_entry["file"], "bundled": bundled, "expected": outs}


def edited_copy(exported, dest: Path, case: int, edit) -> Path:
    """A copy of the export folder whose .bpte has case `case`'s expected output replaced by
    edit(values) in place (same length, so the flatbuffer stays valid), and whose manifest
    lists the edited file's sha256 and size."""
    shutil.copytree(exported["dir"], dest)
    bpte = dest / exported["bpte"].name
    data = bpte.read_bytes()
    original = np.ascontiguousarray(exported["expected"][case], dtype=np.float32)
    assert data.count(original.tobytes()) == 1, "the expected output is stored once, as raw float32"
    changed = np.ascontiguousarray(edit(original.copy()), dtype=np.float32)
    assert changed.shape == original.shape and not np.array_equal(changed, original)
    bpte.write_bytes(data.replace(original.tobytes(), changed.tobytes()))
    manifest = mf.read_manifest(dest)
    for record in manifest["artifacts"]:
        if record["file"] == bpte.name:
            record.update(sha256=mf.sha256_file(bpte), bytes=bpte.stat().st_size)
    mf.write_manifest(dest, manifest)
    return bpte


def wrong_top1(values):
    """The lowest logit becomes the highest: an output no correct runtime gives."""
    flat = values.reshape(-1)
    flat[flat.argmin()] = flat.max() + 5.0
    return values


def test_intact_bpte_passes_its_self_check(exported):
    from mobile_export.verify import verify_artifact

    report = verify_artifact(exported["bpte"], limit=3)
    assert report["bundled_self_check"] == {"cases": 3, "passed": 3}
    assert report["passed"], report["failures"]


@pytest.mark.parametrize("case", [0])
def test_corrupted_expected_output_fails_that_case(exported, tmp_path, case):
    from mobile_export.verify import verify_artifact

    bpte = edited_copy(exported, tmp_path / "edited", case, wrong_top1)
    report = verify_artifact(bpte, limit=3)
    assert report["bundled_self_check"] == {"cases": 3, "passed": 2}
    assert not report["passed"]
    assert "bundled self-check: 2 of 3 embedded cases match their expected outputs" in report["failures"]


def test_corrupted_case_is_reported_by_the_runtime_itself(exported, tmp_path):
    """The child's per-case result (what an app reads on the device) names the broken case."""
    from mobile_export.executorch.runtime import run_isolated

    bpte = edited_copy(exported, tmp_path / "edited", 1, wrong_top1)
    bundled = exported["bundled"]
    x = np.zeros((1, 3, RES, RES), np.float32)
    result = run_isolated(
        bpte, [x], bundled_cases=bundled["cases"], bundled_tolerance=(bundled["rtol"], bundled["atol"])
    )
    assert result["bundled_ok"].tolist() == [1, 0, 1]


def test_edit_inside_the_tolerance_still_passes(exported, tmp_path):
    """rtol is 1e-3 for fp32: a 1e-4 relative change of one value must not fail, so the
    failures above come from the wrong value, not from editing the file."""
    from mobile_export.verify import verify_artifact

    assert exported["bundled"]["rtol"] == 1e-3

    def nudge(values):
        flat = values.reshape(-1)
        i = int(np.abs(flat).argmax())
        flat[i] = flat[i] * (1.0 + 1e-4)
        return values

    report = verify_artifact(edited_copy(exported, tmp_path / "nudged", 0, nudge), limit=3)
    assert report["bundled_self_check"] == {"cases": 3, "passed": 3}
    assert report["passed"], report["failures"]
