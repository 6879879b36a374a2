"""The int8 quality bar on a TRAINED model, through the real path: a MobileNetV2 0.35 trained
on scikit-learn's handwritten digit scans (tests/fixtures/trained/, made by
scripts/train_small.py, weights stored in fp16 to stay under 1 MB), exported to an int8 .pte
by ExecuTorchTarget with calibration images read from a folder of training-split PNGs, run in
the ExecuTorch runtime, compared with the fp32 model on the 539 held-out scans.

Random weights would hide quantization damage. The harder measurements (real photographs,
other family members, several recipes) are scripts/int8_quality.py -> docs/int8_quality.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
CHECKPOINT = ROOT / "tests" / "fixtures" / "trained" / "mobilenet_v2_035_digits_64.safetensors"

pytest.importorskip("executorch")
pytest.importorskip("sklearn")  # the digit scans ship inside scikit-learn

MAX_DROP_POINTS = 0.3
MIN_AGREEMENT_PCT = 99.0
CALIBRATION_IMAGES = 64  # drawn from the training split, never from the held-out one


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    import int8_quality
    import train_small

    from mobile_export.models import BuiltModel, get_spec
    from mobile_export.targets.base import ExportOptions
    from mobile_export.targets.executorch import ExecuTorchTarget

    model, meta, pre = train_small.load_checkpoint(CHECKPOINT)
    data = train_small.load_dataset(meta["dataset"], meta["resolution"], seed=0, cache=False)
    work = tmp_path_factory.mktemp("int8_quality")
    calib = work / "calibration"
    int8_quality.write_calibration_folder(calib, data.train_x, CALIBRATION_IMAGES, seed=0)

    built = BuiltModel(module=model, spec=get_spec(meta["model"]), preprocess=pre,
                       num_classes=meta["num_classes"], resolution=meta["resolution"],
                       weights={"source": "file", "detail": CHECKPOINT.name})
    target = ExecuTorchTarget()
    dest = work / "model_int8.pte"
    fields = target.export(built, ExportOptions(quantize="int8", calibration=calib,
                                                calibration_limit=CALIBRATION_IMAGES), dest, lambda _m: None)
    x_test = int8_quality.rgb01(data.test_x)
    int8 = np.concatenate(target.run(dest, fields, [x[None] for x in x_test]))
    fp32 = train_small.logits_of(model, train_small.to_inputs(data.test_x, pre))
    return {"meta": meta, "fields": fields, "y": data.test_y, "fp32": fp32, "int8": int8}


def test_checkpoint_is_a_small_trained_model():
    from safetensors import safe_open

    assert CHECKPOINT.stat().st_size < 1_000_000
    with safe_open(str(CHECKPOINT), "pt") as fh:
        meta = json.loads(fh.metadata()["mobile_export"])
    assert meta["dataset"] == "digits" and meta["num_classes"] == 10


def test_fp32_model_is_trained(measured):
    acc = 100.0 * (measured["fp32"].argmax(1) == measured["y"]).mean()
    assert len(measured["y"]) == 539
    assert acc > 95.0, f"fp32 held-out top-1 {acc:.2f}%: the fixture is not a trained model"


def test_int8_pte_is_fully_delegated_and_calibrated_from_the_folder(measured):
    fields = measured["fields"]
    assert fields["precision"] == "int8"
    assert fields["delegation"]["complete"], fields["delegation"]["outside"]
    calibration = fields["quantization"]["calibration"]
    assert calibration["source"] == "folder" and calibration["images"] == CALIBRATION_IMAGES


def test_int8_meets_the_quality_bar(measured):
    y, fp32, int8 = measured["y"], measured["fp32"], measured["int8"]
    fp32_top1 = 100.0 * (fp32.argmax(1) == y).mean()
    int8_top1 = 100.0 * (int8.argmax(1) == y).mean()
    agreement = 100.0 * (int8.argmax(1) == fp32.argmax(1)).mean()
    noise = float(((fp32 - int8) ** 2).sum())
    sqnr = 10.0 * np.log10(float((fp32 ** 2).sum()) / noise)
    detail = f"fp32 {fp32_top1:.2f}%, int8 {int8_top1:.2f}%, agreement {agreement:.2f}%, logits SQNR {sqnr:.1f} dB"
    assert 15.0 < sqnr < 60.0, detail  # really int8 (not a float program), and not broken
    assert fp32_top1 - int8_top1 <= MAX_DROP_POINTS, detail
    assert agreement >= MIN_AGREEMENT_PCT, detail
