"""`mobile-export eval`: statistics against hand-computed cases, the three dataset layouts, and
the trained digit model (tests/fixtures/trained) exported as fp32 .pte, int8 .pte and fp16
.mlpackage, evaluated on its held-out scans; every row's top-1 must equal the top-1 this test
computes itself from the runtimes' outputs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import eval_helpers as h
import junitparser
import numpy as np
import pytest

from mobile_export.errors import ImageError, UsageError
from mobile_export.eval import datasets, stats

EVERY = 5  # 539 held-out scans -> 108 images, all ten classes


# --- statistics -------------------------------------------------------------------------


def test_mcnemar_exact_hand_computed():
    # b=1, c=6: n=7, P[X<=1] = (C(7,0)+C(7,1))/2^7 = 8/128, two-sided 16/128
    assert stats.mcnemar_exact(1, 6) == pytest.approx(0.125, abs=1e-15)
    assert stats.mcnemar_exact(6, 1) == pytest.approx(0.125, abs=1e-15)
    assert stats.mcnemar_exact(0, 5) == pytest.approx(2 / 32, abs=1e-15)
    assert stats.mcnemar_exact(3, 3) == 1.0  # 2 * P[X<=3 | n=6] = 2 * 42/64 > 1
    assert stats.mcnemar_exact(0, 0) == 1.0
    # large n stays exact (integers): 0 vs 60 discordant -> 2 / 2^60
    assert stats.mcnemar_exact(0, 60) == pytest.approx(2.0**-59, rel=1e-12)


def test_paired_counts_and_drop():
    ref = [1, 1, 1, 0, 0, 1]
    row = [1, 0, 0, 1, 0, 1]
    p = stats.Paired.of(ref, row)
    assert (p.n, p.both, p.only_ref, p.only_row, p.neither) == (6, 2, 2, 1, 1)
    assert p.drop_points == pytest.approx(100 * (4 - 3) / 6)


def test_bootstrap_interval_hand_computed():
    # two images, d = (+1, 0): a resample's drop is 0, 50 or 100 points with probabilities
    # 1/4, 1/2, 1/4, so the 2.5% and 97.5% quantiles are 0 and 100
    assert stats.drop_ci(stats.Paired.of([1, 1], [0, 1])) == (0.0, 100.0)
    # no discordant image: every resample has drop 0
    assert stats.drop_ci(stats.Paired.of([1, 0, 1], [1, 0, 1])) == (0.0, 0.0)
    # every image lost: the drop is 100 points in every resample
    assert stats.drop_ci(stats.Paired.of([1, 1, 1], [0, 0, 0])) == (100.0, 100.0)
    # seeded: the same interval every time; it contains the observed drop
    p = stats.Paired(1000, 900, 30, 10, 60)
    lo, hi = stats.drop_ci(p)
    assert (lo, hi) == stats.drop_ci(p) and lo < p.drop_points < hi
    # the multinomial shortcut equals resampling images: compare with a direct bootstrap
    d = np.array([1] * 30 + [-1] * 10 + [0] * 960)
    rng = np.random.default_rng(1)
    direct = 100 * np.array([d[rng.integers(0, 1000, 1000)].mean() for _ in range(4000)])
    assert abs(np.quantile(direct, 0.025) - lo) <= 0.3 and abs(np.quantile(direct, 0.975) - hi) <= 0.3


def test_verdict_wording():
    assert "not distinguishable from 0 at n=1,000" in stats.verdict(stats.Paired(1000, 900, 3, 1, 96), 0.625)
    assert "real drop" in stats.verdict(stats.Paired(1000, 900, 30, 1, 69), 1e-7)


# --- dataset layouts --------------------------------------------------------------------


def _img(path: Path, value: int = 128) -> None:
    h.write_png(path, np.full((8, 8, 3), value, np.uint8))


def test_imagefolder_matches_names_loosely_and_lists_what_matches_nothing(tmp_path):
    labels = ["great white shark", "tench", "goldfish"]
    for name in ("Great_White_Shark", "tench"):
        _img(tmp_path / "ok" / name / "a.png")
    d = datasets.load_dataset(tmp_path / "ok", labels, 3)
    assert d.layout == "imagefolder" and [(i.name, i.label) for i in d.items] == [
        ("Great_White_Shark/a.png", 0),
        ("tench/a.png", 1),
    ]
    for name in ("tench", "zebra", "koala"):
        _img(tmp_path / "bad" / name / "a.png")
    with pytest.raises(UsageError, match=r"2 class folder name\(s\) match no class.*'koala', 'zebra'"):
        datasets.load_dataset(tmp_path / "bad", labels, 3)


def test_csv_labels_by_name_or_index_every_and_limit(tmp_path):
    for i in range(6):
        _img(tmp_path / f"f{i}.png")
    (tmp_path / "labels.csv").write_text(
        "file,label\nf0.png,cat\nf1.png,1\nf2.png,dog\nf3.png,0\nf4.png,cat\nf5.png,dog\n"
    )
    d = datasets.load_dataset(tmp_path, ["cat", "dog"], 2)
    assert d.layout == "csv" and [i.label for i in d.items] == [0, 1, 1, 0, 0, 1]
    d = datasets.load_dataset(tmp_path, ["cat", "dog"], 2, every=2, limit=2)
    assert [i.name for i in d.items] == ["f0.png", "f2.png"] and d.total == 6
    (tmp_path / "labels.csv").write_text("f0.png,cat\nf1.png,horse\n")
    with pytest.raises(UsageError, match="'horse'"):
        datasets.load_dataset(tmp_path, ["cat", "dog"], 2)


def _imagenet_files(root: Path, count: int) -> None:
    for i in range(1, count + 1):
        _img(root / f"ILSVRC2012_val_{i:08d}.JPEG".replace(".JPEG", ".png"))


def test_imagenet_val_txt_and_kaggle(tmp_path):
    _imagenet_files(tmp_path, 3)
    (tmp_path / "val.txt").write_text(
        "ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000002.JPEG 970\nILSVRC2012_val_00000003.JPEG 0\n"
    )
    d = datasets.load_dataset(tmp_path, None, 1000)
    assert d.layout == "imagenet-val" and [i.label for i in d.items] == [65, 970, 0]
    with pytest.raises(UsageError, match="the model has 10"):
        datasets.load_dataset(tmp_path, None, 10)
    kaggle = tmp_path / "k"
    _imagenet_files(kaggle, 2)
    wnids = sorted(f"n{1000000 + 7 * i:08d}" for i in range(1000))
    (kaggle / "LOC_synset_mapping.txt").write_text("".join(f"{w} name {i}\n" for i, w in enumerate(wnids)))
    (kaggle / "LOC_val_solution.csv").write_text(
        f"ImageId,PredictionString\nILSVRC2012_val_00000001,{wnids[5]} 1 2 3 4\n"
        f"ILSVRC2012_val_00000002,{wnids[999]} 1 2 3 4 {wnids[999]} 5 6 7 8\n"
    )
    assert [i.label for i in datasets.load_dataset(kaggle, None, 1000).items] == [5, 999]


def test_imagenet_devkit_ids_are_mapped_through_meta_mat_not_taken_as_indices(tmp_path):
    from scipy.io import savemat

    _imagenet_files(tmp_path, 3)
    (tmp_path / datasets.DEVKIT_GT).write_text("1\n2\n1000\n")
    with pytest.raises(UsageError, match="meta.mat"):
        datasets.load_dataset(tmp_path, None, 1000)
    # devkit order: ID k has a WNID whose sorted position is NOT k-1 (reversed here),
    # plus non-leaf synsets (num_children > 0) that must be ignored
    wnids = [f"n{2000000 + i:08d}" for i in range(1000)]
    leaves = [(k + 1, wnids[999 - k], 0) for k in range(1000)]
    inner = [(1001, "n09999999", 5)]
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O")]
    synsets = np.array([(i, w, "x", "y", c) for i, w, c in leaves + inner], dtype=dtype)
    savemat(str(tmp_path / "meta.mat"), {"synsets": synsets})
    assert datasets.devkit_id_to_index(tmp_path / "meta.mat")[1] == 999
    d = datasets.load_dataset(tmp_path, None, 1000)
    assert [i.label for i in d.items] == [999, 998, 0]


def test_empty_and_missing_dataset(tmp_path):
    (tmp_path / "cls").mkdir()
    with pytest.raises(ImageError, match="no labelled images"):
        datasets.load_dataset(tmp_path, ["cls"], 1)
    with pytest.raises(ImageError, match="does not exist"):
        datasets.load_dataset(tmp_path / "nope", ["cls"], 1)


# --- the trained digit model, end to end --------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    pytest.importorskip("executorch")
    pytest.importorskip("sklearn")
    import torch

    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("eval_digits")
    artifacts = h.export_artifacts(h.DIGITS, work)
    classes, x, y, _ = h.held_out(h.DIGITS)
    return {
        "checkpoint": h.DIGITS,
        "work": work,
        "artifacts": artifacts,
        "classes": classes,
        "x": x,
        "y": y,
        "folder": h.write_imagefolder(work / "folder", classes, x, y),
    }


def _direct_top1(fixture, names: list[str]) -> dict[str, int]:
    """Top-1 (correct images) of every row computed here, without mobile_export.eval: each image decoded by the
    manifest's preprocessing, run through the targets' own `run` and the PyTorch model."""
    import train_small

    from mobile_export import manifest as mf
    from mobile_export.coreml.target import CoreMLTarget
    from mobile_export.executorch.target import ExecuTorchTarget
    from mobile_export.preprocess import load_input
    from mobile_export.verify.reference import preprocess_of

    model, _, _ = train_small.load_checkpoint(fixture["checkpoint"])
    manifest, _ = mf.manifest_for(fixture["artifacts"]["fp32"])
    pre = preprocess_of(manifest)
    files = [fixture["folder"] / n for n in names]
    y = np.array([fixture["classes"].index(n.split("/")[0]) for n in names])
    raw = [load_input(f, pre, normalized=False) for f in files]
    norm = [load_input(f, pre, normalized=True) for f in files]
    top1 = {"reference": int((train_small.logits_of(model, np.concatenate(norm)).argmax(1) == y).sum())}
    for tag, path in fixture["artifacts"].items():
        _, entry = mf.manifest_for(path)
        target = CoreMLTarget() if tag == "fp16" else ExecuTorchTarget()
        inputs = raw if entry["input"].get("normalized_in_model") else norm
        out = np.concatenate([np.asarray(o).reshape(1, -1) for o in target.run(path, entry, inputs)])
        top1[tag] = int((out.argmax(1) == y).sum())
    return top1


def test_every_row_equals_the_runtimes_own_top1(digits, tmp_path):
    from mobile_export.eval import EvalOptions, build_report, run_eval

    arts = digits["artifacts"]
    outcome = run_eval(
        [arts["fp32"], arts["int8"], arts["fp16"]],
        EvalOptions(dataset=digits["folder"], every=EVERY, cache_dir=tmp_path, batch=128),
    )
    report = build_report(outcome)
    rows = {r["name"]: r for r in report["rows"]}
    names = [it.name for it in outcome.dataset.items]
    assert len(names) == 108 and len({n.split("/")[0] for n in names}) == 10
    direct = _direct_top1(digits, names)
    ref = report["rows"][0]
    assert ref["kind"] == "reference" and ref["top1_correct"] == direct["reference"]
    assert ref["top1"] == round(100 * direct["reference"] / 108, 4)
    assert ref["top1"] > 90.0  # a trained model, not flat logits
    for tag in ("fp32", "int8", "fp16"):
        row = rows[arts[tag].name]
        assert row["top1_correct"] == direct[tag], tag
        assert row["images"] == 108 and row["evaluated_now"] == 108
        lo, hi = row["drop_ci95"]
        assert lo <= row["drop_points"] <= hi and 0.0 <= row["mcnemar_p"] <= 1.0
        lost, gained = row["discordant"]["lost"], row["discordant"]["gained"]
        assert len(row["flips"]["lost"]) == lost and len(row["flips"]["gained"]) == gained
        assert row["drop_points"] == pytest.approx(
            100 * (lost - gained) / 108, abs=1e-4
        )  # rounded to 4 places
    assert rows[arts["fp32"].name]["agreement"] == 100.0  # fp32 XNNPACK vs PyTorch on 108 scans
    from mobile_export.eval.report import format_html

    page = format_html(report)
    for tag in ("fp32", "int8", "fp16"):
        row = rows[arts[tag].name]
        drops = row["class_drops"]
        assert sorted(c["class"] for c in drops) == list(range(10)) and sum(c["images"] for c in drops) == 108
        assert [c["drop_points"] for c in drops] == sorted((c["drop_points"] for c in drops), reverse=True)
        for c in drops:  # each class's drop is its own flipped files: lost minus gained
            lost = sum(n.split("/")[0] == c["label"] for n in row["flips"]["lost"])
            gained = sum(n.split("/")[0] == c["label"] for n in row["flips"]["gained"])
            assert c["images"] * c["drop_points"] / 100 == pytest.approx(lost - gained, abs=0.01), c
        # the HTML chart: one bar per class whose accuracy moved (one bar when none did)
        moved = sum(c["drop_points"] != 0 for c in drops) or 1
        section = page.split(f"<h2>{row['name']}</h2>")[1].split("<h2>")[0]
        assert section.count("<rect ") == moved


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The photo task of the int8 checks (17 classes cut from the scikit-image photographs),
    trained V1 0.5 at 64 px, exported as fp32 .pte, int8 .pte and fp16 .mlpackage."""
    pytest.importorskip("executorch")
    pytest.importorskip("skimage")
    import torch

    torch.set_num_threads(1)
    checkpoint = h.TRAINED / "mobilenet_v1_050_photos_64.safetensors"
    work = tmp_path_factory.mktemp("eval_photos")
    classes, x, y, _ = h.held_out(checkpoint)
    return {
        "checkpoint": checkpoint,
        "artifacts": h.export_artifacts(checkpoint, work),
        "classes": classes,
        "folder": h.write_imagefolder(work / "folder", classes, x, y),
    }


@pytest.mark.slow  # three more exports (one int8-calibrated) of a second model: minutes
def test_photo_task_rows_equal_the_runtimes_own_top1(photos, tmp_path):
    from mobile_export.eval import EvalOptions, build_report, run_eval

    arts = photos["artifacts"]
    outcome = run_eval(
        [arts["fp32"], arts["int8"], arts["fp16"]],
        EvalOptions(dataset=photos["folder"], every=10, cache_dir=tmp_path, batch=128),
    )
    report = build_report(outcome)
    names = [it.name for it in outcome.dataset.items]
    n = len(names)
    assert n == 102 and len({name.split("/")[0] for name in names}) == 17
    direct = _direct_top1(photos, names)
    rows = {r["name"]: r for r in report["rows"]}
    ref = report["rows"][0]
    assert ref["kind"] == "reference" and ref["top1_correct"] == direct["reference"]
    assert ref["top1"] > 100 / 17 * 3  # trained: far above chance
    for tag in ("fp32", "int8", "fp16"):
        row = rows[arts[tag].name]
        assert row["top1_correct"] == direct[tag], tag
        assert row["images"] == n and row["evaluated_now"] == n
        lost, gained = row["discordant"]["lost"], row["discordant"]["gained"]
        assert row["mcnemar_p"] == stats.mcnemar_exact(lost, gained)
        assert row["drop_points"] == pytest.approx(100 * (lost - gained) / n, abs=1e-4)


def test_resume_after_interrupt_evaluates_no_image_twice(digits, tmp_path):
    """Ctrl-C after the first unit; the rerun evaluates only the rest; same report as one run."""
    from mobile_export.eval import EvalOptions, build_report, run_eval

    art = [digits["artifacts"]["fp16"]]  # the in-process executor: fast to repeat
    options = EvalOptions(dataset=digits["folder"], every=EVERY, cache_dir=tmp_path / "cache", batch=16)
    seen: list[list[int]] = [[], []]

    def interrupt(unit, result):
        seen[0].extend(unit.indices)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_eval(art, options, on_unit=interrupt)
    assert len(seen[0]) == 16
    outcome = run_eval(art, options, on_unit=lambda unit, result: seen[1].extend(unit.indices))
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(108))
    assert set(outcome.computed.values()) == {108 - 16}
    again = run_eval(art, options, on_unit=lambda unit, result: pytest.fail("nothing left to evaluate"))
    assert set(again.computed.values()) == {0}
    fresh = run_eval(
        art, EvalOptions(dataset=digits["folder"], every=EVERY, cache_dir=tmp_path / "fresh", batch=64)
    )

    def comparable(outcome):
        doc = build_report(outcome)
        for r in doc["rows"]:
            r.pop("evaluated_now")
        doc.pop("seconds")
        return doc

    assert comparable(outcome) == comparable(fresh) == comparable(again)


def test_progress_counts_every_image_once_cached_or_not(digits, tmp_path):
    """The bar advances by exactly the selected images, whether evaluated or read from the cache."""
    from mobile_export.eval import EvalOptions, run_eval

    bars = []

    class Bar:
        def __init__(self, total):
            self.total, self.steps, self.closed = total, [], False
            bars.append(self)

        def update(self, n):
            self.steps.append(n)

        def close(self):
            self.closed = True

    art = [digits["artifacts"]["fp16"]]
    options = EvalOptions(dataset=digits["folder"], every=EVERY, limit=20, cache_dir=tmp_path, batch=8)
    first = run_eval(art, options, progress=Bar)
    second = run_eval(art, options, progress=Bar)
    assert [b.total for b in bars] == [20, 20] and all(b.closed for b in bars)
    assert bars[0].steps == [8, 8, 4] and sum(bars[1].steps) == 20  # per unit; then all cache hits
    assert set(first.computed.values()) == {20} and set(second.computed.values()) == {0}


def test_memory_does_not_grow_with_the_number_of_images(digits, tmp_path):
    """Streaming: 10x the images, the same peak of traced (Python and numpy) memory. Holding the
    decoded inputs would add 144 x 3 x 64 x 64 float32, twice (raw and normalized): ~14 MB."""
    import tracemalloc

    from mobile_export.eval import EvalOptions, run_eval

    art = [digits["artifacts"]["fp16"]]

    def peak(limit: int, run: str) -> int:
        options = EvalOptions(dataset=digits["folder"], limit=limit, cache_dir=tmp_path / run, batch=16)
        tracemalloc.start()
        try:
            outcome = run_eval(art, options)
            traced = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert set(outcome.computed.values()) == {limit}
        return traced

    peak(16, "warm-up")  # imports and the executor's one-time state
    small, large = peak(16, "small"), peak(160, "large")
    assert large - small < 2 << 20, (small, large)


def test_cache_reevaluates_what_changed_and_only_that(digits, tmp_path):
    """A touched image, a re-exported artifact under the same name and another preprocessing
    contract each miss the cache; everything else is a hit."""
    import os

    from mobile_export.eval import EvalOptions, run_eval

    folder = h.write_imagefolder(tmp_path / "set", digits["classes"], digits["x"][::45], digits["y"][::45])
    n = len(digits["x"][::45])
    export = tmp_path / "export"
    shutil.copytree(digits["artifacts"]["fp32"].parent, export)
    fp32, fp16 = export / digits["artifacts"]["fp32"].name, export / digits["artifacts"]["fp16"].name
    options = EvalOptions(dataset=folder, cache_dir=tmp_path / "cache", batch=n)

    def computed(outcome):
        return {
            row.kind if row.kind != "executorch" else "pte": outcome.computed[row.key]
            for row in outcome.plan.rows
        }

    first = run_eval([fp32, fp16], options)
    assert computed(first) == {"reference": n, "pte": n, "coreml": n}

    image = sorted(folder.rglob("*.png"))[3]
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = run_eval([fp32, fp16], options)
    assert computed(touched) == {"reference": 1, "pte": 1, "coreml": 1}
    for key, top5 in first.top5.items():  # same pixels, same answers
        np.testing.assert_array_equal(touched.top5[key], top5)

    # "re-export": other bytes under the same file name, manifest updated; the reference is unchanged
    manifest = json.loads((export / "manifest.json").read_text())
    int8 = next(a for a in manifest["artifacts"] if a["file"] == digits["artifacts"]["int8"].name)
    entry = next(a for a in manifest["artifacts"] if a["file"] == fp32.name)
    entry["sha256"], entry["bytes"] = int8["sha256"], int8["bytes"]
    shutil.copy(export / int8["file"], fp32)
    (export / "manifest.json").write_text(json.dumps(manifest))
    swapped = run_eval([fp32, fp16], options)
    assert computed(swapped) == {"reference": 0, "pte": n, "coreml": 0}

    manifest["preprocess"]["interpolation"] = "bicubic"  # another contract: nothing may be reused
    (export / "manifest.json").write_text(json.dumps(manifest))
    recontracted = run_eval([fp32, fp16], options)
    assert computed(recontracted) == {"reference": n, "pte": n, "coreml": n}


def test_cli_csv_layout_reports_and_bad_inputs(digits, tmp_path, cli):
    mlpackage = digits["artifacts"]["fp16"]
    csv_root = h.write_csv_set(
        tmp_path / "csv", digits["classes"], digits["x"][::EVERY], digits["y"][::EVERY], by_name=False
    )
    (csv_root / "img_0003.png").write_bytes(b"not a png")  # unreadable: skipped and counted
    report = tmp_path / "report"
    code, out, err = cli("eval", mlpackage, "--dataset", csv_root, "--report", report, "--json")
    assert code == 0, err
    # the progress bar on stderr, with its rate and time left (tqdm: n/total [elapsed<remaining, rate])
    assert re.search(r"\b108/108 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(img/s|s/img)\]", err), err[-500:]
    doc = json.loads(out)
    assert (
        doc["dataset"]["layout"] == "csv"
        and doc["dataset"]["skipped"] == 1
        and doc["dataset"]["evaluated"] == 107
    )
    assert json.loads((report / "report.json").read_text())["rows"] == doc["rows"]
    assert "<svg" in (report / "report.html").read_text() and "| row |" in (report / "report.md").read_text()
    lines = (report / "predictions.csv").read_text().splitlines()
    assert len(lines) == 109 and lines[4].endswith(",,")  # img_0003: no prediction

    # the gate through the CLI (cached answers): --limit, --junit, --max-top1-drop over the project's
    (tmp_path / "mobile-export.toml").write_text("max-top1-drop = 100.0\n")
    junit = tmp_path / "eval.xml"
    args = ("eval", mlpackage, "--dataset", csv_root, "--report", report, "--limit", 20, "--json")
    limit_args = ("--junit", junit, "--config", tmp_path / "mobile-export.toml", "--max-top1-drop", 0)
    code, out, err = cli(*args, *limit_args)
    drop = json.loads(out)["rows"][1]["drop_points"]
    counted = json.loads(out)["dataset"]
    assert counted["evaluated"] + counted["skipped"] == 20  # img_0003 is among the first 20
    assert code == (1 if drop > 0 else 0), err
    suite = next(iter(junitparser.JUnitXml.fromfile(str(junit))))
    assert (suite.tests, suite.failures) == (1, 1 if drop > 0 else 0)
    if drop > 0:
        assert "(--max-top1-drop)" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(*args, "--max-top1-drop", 150)  # out of range: a usage error naming the flag
    assert code == 2 and "max-top1-drop = 150" in err

    # labels that match no class: exit 2, one line, nothing written
    bad = tmp_path / "bad"
    _img(bad / "3" / "a.png")
    _img(bad / "eleven" / "b.png")
    code, out, err = cli("eval", mlpackage, "--dataset", bad, "--report", tmp_path / "r2")
    assert code == 2 and "'eleven'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r2" / "report.json").exists()
    # empty dataset: exit 1
    (tmp_path / "empty" / "3").mkdir(parents=True)
    code, _, err = cli("eval", mlpackage, "--dataset", tmp_path / "empty")
    assert code == 1 and "no labelled images" in err
    # missing manifest: exit 1
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(digits["artifacts"]["fp32"], lone)
    code, _, err = cli("eval", lone / digits["artifacts"]["fp32"].name, "--dataset", csv_root)
    assert code == 1 and "no manifest" in err
    # two different models in one call: exit 2
    other = tmp_path / "other"
    shutil.copytree(mlpackage.parent, other, ignore=shutil.ignore_patterns("*.pte"))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model"]["weights"]["sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = cli("eval", mlpackage, other / mlpackage.name, "--dataset", csv_root)
    assert code == 2 and "not the same model" in err and "differs in: weights" in err
    assert str(other / mlpackage.name) in err  # same file names: the message shows the paths


def test_nothing_imports_ray_without_the_flag():
    import subprocess
    import sys

    code = (
        "import sys, mobile_export.cli, mobile_export.eval, mobile_export.eval.runner, mobile_export.eval.report; "
        "assert 'ray' not in sys.modules and 'torch' not in sys.modules, sorted(m for m in sys.modules if m in ('ray', 'torch'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(h.ROOT))


def test_ray_flag_without_ray_is_a_usage_error(monkeypatch):
    import sys

    from mobile_export.cluster import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'mobile-export\[cluster\]'"):
        RayExecutor()
