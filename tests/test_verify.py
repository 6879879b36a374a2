"""verify: metrics checked against numbers worked out by hand, the threshold table, the
per-layer writer, the report text, and the cheap refusals before anything runs."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from mobile_export.errors import ArtifactError, ManifestError
from mobile_export.verify import format_report, metrics, thresholds
from mobile_export.verify.per_layer import LayerRow, sort_by_loss, write_per_layer_report

# --- metrics: hand-checkable numbers -------------------------------------------------------


def test_errors_and_sqnr_by_hand():
    ref = np.array([[3.0, 4.0]])
    test = np.array([[3.0, 3.0]])
    assert metrics.max_abs_error(ref, test) == 1.0
    assert metrics.mean_abs_error(ref, test) == 0.5
    # signal 9 + 16 = 25, noise 1 -> 10 log10(25) = 13.979 dB
    assert metrics.sqnr_db(ref, test) == pytest.approx(10 * math.log10(25.0))
    assert metrics.sqnr_db(ref, ref) == math.inf
    assert metrics.sqnr_db(np.zeros((1, 2)), np.ones((1, 2))) == -math.inf
    # 10x less error amplitude = +20 dB
    assert metrics.sqnr_db(ref, ref + 0.1 * (test - ref)) - metrics.sqnr_db(ref, test) == pytest.approx(20.0)


def test_cosine_by_hand():
    assert metrics.cosine_similarity([[1.0, 0.0]], [[0.0, 1.0]]) == pytest.approx(0.0)
    assert metrics.cosine_similarity([[1.0, 1.0]], [[2.0, 2.0]]) == pytest.approx(1.0)
    assert metrics.cosine_similarity([[1.0, 0.0]], [[-1.0, 0.0]]) == pytest.approx(-1.0)
    # mean over rows: (1 + 0) / 2
    assert metrics.cosine_similarity([[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]) == pytest.approx(0.5)
    assert metrics.cosine_similarity([[0.0, 0.0]], [[0.0, 0.0]]) == 1.0


def test_topk_by_hand():
    ref = np.array([[0.1, 0.9, 0.5, 0.3, 0.2, 0.0, -1.0], [5.0, 1.0, 2.0, 3.0, 4.0, 0.0, -1.0]])
    test = np.array(
        [
            [0.1, 0.4, 0.5, 0.3, 0.2, 0.0, -1.0],  # top-1 moves from 1 to 2; top-5 set unchanged
            [5.0, 1.0, 2.0, 3.0, 4.0, 4.5, -1.0],
        ]
    )  # class 5 enters top-5, class 1 leaves; top-1 stays
    assert metrics.top1_agreement(ref, test) == 0.5
    assert metrics.topk_overlap(ref, test, 5) == pytest.approx((5 / 5 + 4 / 5) / 2)
    # row 0 margin 0.4, row 1 margin 1.0
    assert list(metrics.top1_ties(ref, 0.5)) == [True, False]
    assert list(metrics.top1_ties(ref, 0.3)) == [False, False]


def test_ties_are_counted_from_the_row_constant_never_from_the_error():
    """The tie tolerance is the precision's expected error times the logit scale: a broken file
    with a huge error does not turn its flips into excused ties, and agreement stays plain."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 10))
    broken = ref[:, ::-1]  # every class moved: a wrong output order
    c = metrics.compare(ref, broken, tie_tolerance=0.01)
    assert c["top1_agreement"] < 0.2 and c["top1_flips"] == round(200 * (1 - c["top1_agreement"]))
    scale = metrics.logit_scale(ref)
    top2 = -np.sort(-ref, axis=1)[:, :2]
    assert c["top1_ties"] == int(np.sum(top2[:, 0] - top2[:, 1] <= 0.01 * scale)) < 10
    assert c["top1_flips_on_ties"] <= c["top1_ties"]
    # the same broken output with a 100x larger error still has the same ties and agreement
    c2 = metrics.compare(ref, broken * 100, tie_tolerance=0.01)
    assert c2["top1_ties"] == c["top1_ties"] and c2["top1_agreement"] == c["top1_agreement"]
    assert metrics.logit_scale(np.array([[1.0, -1.0]])) == pytest.approx(1.0)


def test_steps_and_compare():
    ref = np.array([[1.0, 2.0, 3.0]])
    test = np.array([[1.0, 2.0, 3.3]])
    assert metrics.error_in_steps(ref, test, 0.1) == pytest.approx(3.0)
    # a high percentile does not grow with the number of images like the maximum does
    many = np.tile(ref, (1000, 1))
    err = many.copy()
    err[:, 2] += 0.1  # one step everywhere
    err[0, 2] += 2.0  # and one outlier of 20 more steps in one image
    assert metrics.error_in_steps(many, err, 0.1) == pytest.approx(21.0)
    assert metrics.error_in_steps(many, err, 0.1, 99.9) == pytest.approx(1.0)
    assert math.isnan(metrics.error_in_steps(ref, test, 0.0))
    c = metrics.compare(ref, ref)
    assert c["sqnr_db"] == metrics.SQNR_CAP_DB and c["max_abs"] == 0.0 and c["top1_agreement"] == 1.0
    json.dumps(c, allow_nan=False)  # strict JSON: the manifest is parsed by the apps
    assert "top1_agreement" not in metrics.compare(ref, test, topk=False)
    with pytest.raises(ValueError):
        metrics.compare(ref, np.zeros((1, 4)))


def test_input_dependence_by_hand():
    bias = np.tile(np.array([[0.3, -0.1, 0.2]]), (5, 1))
    assert metrics.input_dependence_db(bias) == math.inf  # every image the same
    assert math.isnan(metrics.input_dependence_db(bias[:1]))  # one image: not measurable
    # rows (1, 0) and (-1, 0): mean (0, 0), so all the energy depends on the image: 0 dB
    assert metrics.input_dependence_db([[1.0, 0.0], [-1.0, 0.0]]) == pytest.approx(0.0)
    # mean (10, 0) plus +-0.1: signal 100.01, image-dependent part 0.01 -> 40 dB
    assert metrics.input_dependence_db([[10.1, 0.0], [9.9, 0.0]]) == pytest.approx(
        10 * math.log10(100.01 / 0.01)
    )
    # the old detector's blind spot (issue 21): a spread of 1e-4 of the scale on one class
    # passed its 1e-4 limit; here it measures ~85 dB and fails the row's input-dependence limit
    rng = np.random.default_rng(0)
    flat = np.tile(rng.normal(size=(1, 1000)), (16, 1)) + 1e-4 * rng.normal(size=(16, 1000)) * 0.6
    db = metrics.input_dependence_db(flat)
    assert db > 80
    key, limits = thresholds.limits_for({"precision": "fp32", "quantization": {"mode": "none"}})
    failures = thresholds.check({"input_independence_db": db}, limits, key)
    assert (
        len(failures) == 1
        and "--accept-input-independent" in failures[0]
        and "trained weights" in failures[0]
    )


def test_nan_output_is_minus_cap_not_plus():
    ref = np.array([[1.0, 2.0, 3.0]])
    c = metrics.compare(ref, np.array([[1.0, np.nan, 3.0]]))
    assert c["sqnr_db"] == -metrics.SQNR_CAP_DB and c["non_finite"] == 1 and c["cosine"] is None
    json.dumps(c, allow_nan=False)


# --- thresholds ----------------------------------------------------------------------------


def test_one_table_keys_and_failures():
    assert thresholds.key_for({"precision": "fp32", "quantization": {"mode": "none"}}) == "fp32"
    assert (
        thresholds.key_for({"precision": "int8", "quantization": {"mode": "pt2e-int8"}}) == "int8/pt2e-int8"
    )
    assert thresholds.key_for({"precision": "int8", "quantization": {"mode": "something-new"}}) == "int8"
    assert (
        thresholds.key_for({"precision": "fp16", "quantization": {"mode": "palettize4"}}) == "fp16/palettize4"
    )
    assert (
        thresholds.key_for({"precision": "fp16", "quantization": {"mode": "prune50"}}) == "fp16"
    )  # no row: precision
    key, limits = thresholds.limits_for({"precision": "fp32", "quantization": {"mode": "none"}})
    good = {
        "sqnr_db": 90.0,
        "cosine": 1.0,
        "top1_agreement": 1.0,
        "top5_overlap": 1.0,
        "input_independence_db": 1.0,
    }
    assert thresholds.check(good, limits, key) == []
    bad = dict(good, sqnr_db=42.0, top1_agreement=0.9)
    failures = thresholds.check(bad, limits, key)
    assert len(failures) == 2 and f"SQNR vs float 42 dB < {limits['sqnr_db']:g} dB (fp32)" in failures[0]
    # a metric that does not apply (features output: no top-k) is skipped, not failed
    assert thresholds.check({"sqnr_db": 90.0}, limits, key) == []
    key8, limits8 = thresholds.limits_for({"precision": "int8", "quantization": {"mode": "pt2e-int8"}})
    steps = limits8["steps_vs_quantized"] + 1
    fails8 = thresholds.check(
        {"sqnr_db": 40.0, "top1_agreement": 1.0, "steps_vs_quantized": steps, "sqnr_db_vs_quantized": 40.0},
        limits8,
        key8,
    )
    assert fails8 == [
        f"p99.9 error vs the quantized PyTorch model {steps:g} output steps > "
        f"{limits8['steps_vs_quantized']:g} output steps (int8/pt2e-int8)"
    ]


def test_overrides_replace_or_remove_a_limit_and_refuse_unknown_names():
    from mobile_export.errors import UsageError

    entry = {"precision": "fp16", "quantization": {"mode": "palettize4"}}
    key, limits = thresholds.limits_for(entry, {"top1_agreement": 0.99, "sqnr_db": None})
    assert limits["top1_agreement"] == 0.99 and "sqnr_db" not in limits
    assert thresholds.check({"top1_agreement": 0.95, "sqnr_db": -5.0}, limits, key) == [
        "top-1 agreement vs float 0.95 < 0.99 (fp16/palettize4)"
    ]
    assert (
        thresholds.limits_for(entry)[1]["sqnr_db"] == thresholds.THRESHOLDS["fp16/palettize4"]["sqnr_db"]
    )  # no leak
    with pytest.raises(UsageError, match="unknown parity limit 'top1'"):
        thresholds.limits_for(entry, {"top1": 0.9})


def test_every_row_has_agreement_and_an_input_dependence_limit():
    for key, row in thresholds.THRESHOLDS.items():
        assert "top1_agreement" in row and "sqnr_db" in row and "tie_tolerance" in row, key
        assert row["max_input_independence_db"] == thresholds.INPUT_INDEPENDENCE_DB
        assert set(row) <= set(thresholds.LABELS) | thresholds.PARAMETERS


# --- per-layer writer ----------------------------------------------------------------------


def test_per_layer_writer(tmp_path):
    rows = [
        LayerRow("conv", "conv2d", 40.0, 0.01, 0.9999, 5.0, "stem.conv", "1x8x4x4", 0),
        LayerRow("se", "mul", 25.0, 0.2, 0.99, 15.0, "blocks.1.se", "1x8x4x4", 1),
        LayerRow("fc", "linear", 24.0, 0.3, 0.98, 1.0, "classifier", "1x10", 2),
        LayerRow("runtime", "pte vs PyTorch", 30.0, 0.1, 0.999, None, "", "", 3),
    ]
    assert [r.name for r in sort_by_loss(rows)] == ["se", "conv", "fc", "runtime"]
    paths = write_per_layer_report(rows, tmp_path / "r", "test <model>")
    md = paths["markdown"].read_text()
    assert md.index("| se |") < md.index("| conv |") < md.index("| fc |")
    with open(paths["csv"], newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["name"] for r in table] == ["se", "conv", "fc", "runtime"]
    assert float(table[0]["sqnr_loss_db"]) == 15.0 and table[3]["sqnr_loss_db"] == ""
    page = paths["html"].read_text()
    assert page.count("<svg") == 2 and "test &lt;model&gt;" in page and "15.00 dB" in page


# damaged module -> the row where the table must show the error entering: a's own output;
# for b, its ReLU (the fused conv+ReLU is quantized once, after the ReLU). Measured (loss in dB,
# a/relu/b/relu_1/c): damage in a 7.9/5.2/0.0/4.6/2.9; in b 8.1/2.5/-1.5/12.6/3.1. Not listed: damage
# in c, the output layer, is NOT found (1.0 dB at c vs 8.1 at a): one huge output channel carries
# most of the energy, so an energy ratio barely moves there.
DAMAGED_ROWS = {"a": ("conv2d", "a"), "b": ("relu_1", "b")}


@pytest.mark.parametrize("damaged", sorted(DAMAGED_ROWS))
def test_quantized_layer_rows_find_the_damaged_layer(damaged):
    """A model with one layer whose first output channel has a 500x range: int8 has to
    stretch that layer's output scale, so the error must enter there, and the table must say
    so: the worst row is exactly that layer's (or its ReLU's), by a clear margin."""
    import torch

    from mobile_export.executorch.quantized_layers import EXACT_DB, quantized_layer_values
    from mobile_export.quantize import QuantRecipe, quantize_pt2e
    from mobile_export.verify.per_layer import collect

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.b = torch.nn.Conv2d(8, 8, 1)
            self.c = torch.nn.Conv2d(8, 8, 1)
            with torch.no_grad():
                getattr(self, damaged).weight[0].mul_(500.0)  # one channel with a 500x range

        def forward(self, x):
            return self.c(torch.relu(self.b(torch.relu(self.a(x)))))

    rng = np.random.default_rng(0)
    xs = [rng.random((1, 3, 8, 8), dtype=np.float32) for _ in range(4)]
    q = quantize_pt2e(Net().eval(), torch.zeros(1, 3, 8, 8), xs, QuantRecipe(observer="minmax"))
    rows, _ = collect(lambda sink: quantized_layer_values(q, xs, sink), EXACT_DB)
    assert [(r.name, r.module) for r in rows if r.op != "input"] == [
        ("conv2d", "a"),
        ("relu", ""),
        ("conv2d_1", "b"),
        ("relu_1", ""),
        ("conv2d_2", "c"),
    ]
    ranked = sorted((r for r in rows if r.op != "input"), key=lambda r: r.sqnr_loss_db, reverse=True)
    row_name, module = DAMAGED_ROWS[damaged]
    worst_index = rows.index(ranked[0])
    assert ranked[0].name == row_name, [(r.name, r.sqnr_loss_db) for r in ranked]
    assert (ranked[0].module or rows[worst_index - 1].module) == module
    assert ranked[0].sqnr_loss_db > ranked[1].sqnr_loss_db + 2.0, [(r.name, r.sqnr_loss_db) for r in ranked]
    assert all(math.isfinite(r.sqnr_db) for r in rows)


# --- report text ---------------------------------------------------------------------------


def test_format_report_lines():
    report = {
        "artifact": "m_int8.pte",
        "precision": "int8",
        "quantization": "pt2e-int8",
        "images": {"count": 11, "source": "bundled", "skipped": 1},
        "vs_float": {
            "max_abs": 0.5,
            "mean_abs": 0.05,
            "sqnr_db": 21.5,
            "cosine": 0.99,
            "top1_agreement": 0.9,
            "top1_ties": 1,
            "top1_flips": 2,
            "top1_flips_on_ties": 1,
            "top5_overlap": 0.8,
        },
        "input_dependence": {"sqnr_db_vs_own_mean": 2.5, "limit_db": 30.0, "accepted": False},
        "output_scale": 0.02,
        "steps_vs_float": 25.0,
        "vs_quantized": {"max_abs": 0.02, "mean_abs": 0.001, "sqnr_db": 45.0, "cosine": 0.9999},
        "steps_vs_quantized": 1.0,
        "max_steps_vs_quantized": 3.0,
        "quantized_reference": "rebuilt",
        "thresholds": {"key": "int8/pt2e-int8"},
        "passed": False,
        "failures": ["SQNR vs float 21.5 dB < 30 dB (x)"],
        "warnings": [],
    }
    text = format_report(report)
    assert text.splitlines()[0].startswith("m_int8.pte: FAILED (int8, pt2e-int8")
    assert "1 unreadable skipped" in text and "SQNR 21.5 dB" in text
    assert "top-1 90.0% (2 flips, 1 at near-ties; 1 near-tie)" in text
    assert "reference vs its own mean 2.5 dB" in text
    assert "p99.9 1 steps, max 3" in text and "FAIL        SQNR vs float 21.5 dB" in text


# --- refusals before anything runs ------------------------------------------------------


def _fake_export(tmp_path, data: bytes, sha_of: bytes | None = None):
    import hashlib

    from mobile_export import manifest as mf
    from mobile_export.models import create_model

    built = create_model("mobilenet_v1_025", weights="random", resolution=32)
    m = mf.new_manifest(built)
    pte = tmp_path / "m.pte"
    pte.write_bytes(data)
    m["artifacts"] = [
        {
            "file": "m.pte",
            "target": "executorch",
            "format": "pte",
            "bytes": len(data),
            "sha256": hashlib.sha256(sha_of if sha_of is not None else data).hexdigest(),
            "precision": "fp32",
            "quantization": {"mode": "none"},
            "input": {
                "name": "x",
                "kind": "tensor",
                "shape": [1, 3, 32, 32],
                "layout": "NCHW",
                "dtype": "float32",
                "value_range": [0, 1],
                "normalized_in_model": True,
            },
            "output": {"name": "logits", "kind": "logits"},
        }
    ]
    mf.write_manifest(tmp_path, m)
    return pte


def test_verify_refuses_bad_magic_missing_manifest_and_changed_file(tmp_path):
    from mobile_export.verify import verify_artifact

    with pytest.raises(ArtifactError, match="does not exist"):
        verify_artifact(tmp_path / "nothing.pte")
    pte = _fake_export(tmp_path, b"\0" * 200)
    with pytest.raises(ArtifactError, match="expected b'ET12'"):
        verify_artifact(pte)
    good_header = b"\x1c\0\0\0ET12" + b"\0" * 200
    pte = _fake_export(tmp_path, good_header, sha_of=b"other bytes")
    with pytest.raises(ArtifactError, match="sha256"):
        verify_artifact(pte)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="no manifest"):
        verify_artifact(pte)
    short = tmp_path / "short.pte"
    short.write_bytes(b"\x1c\0\0\0ET12")
    with pytest.raises(ArtifactError, match="too small"):
        verify_artifact(short)


def test_core_ml_compression_has_its_own_threshold_rows():
    from mobile_export.verify.thresholds import check, limits_for

    for mode in ("int8", "palettize6", "palettize4", "w8a8"):
        key, limits = limits_for({"precision": "fp16", "quantization": {"mode": mode}})
        assert key == f"fp16/{mode}"
        # the compression's own loss passes, a broken export (~0 dB) does not
        assert check({"sqnr_db": limits["sqnr_db"] + 1, "top1_agreement": 1.0}, limits, key) == []
        assert check({"sqnr_db": 0.5, "top1_agreement": 1.0}, limits, key)
    assert limits_for({"precision": "fp16", "quantization": {"mode": "none"}})[0] == "fp16"
