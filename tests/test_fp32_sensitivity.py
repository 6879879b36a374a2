"""`--keep-fp32 auto[:PERCENT]` (issue 18): the modules kept in float are chosen by a measured
sensitivity sweep under a budget, recorded in the manifest, and rebuilt by `verify` from the
chosen names. Measured on the trained digits model, whose outputs depend on the image."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
TRAINED = ROOT / "tests" / "fixtures" / "trained" / "mobilenet_v2_035_digits_64.safetensors"
CALIBRATION = 16


def test_units_cover_every_weight_once_and_keep_norms_with_their_conv():
    from mobile_export.executorch.lowering import with_normalization
    from mobile_export.models import create_model
    from mobile_export.quantize.sensitivity import _weights, candidate_units

    built = create_model("mobilenet_v2_035", weights="random")
    units = candidate_units(built.module)
    names = [u.modules for u in units]
    assert (
        names[0] == ("conv_stem", "bn1")
        and names[-2] == ("conv_head", "bn2")
        and names[-1] == ("classifier",)
    )
    blocks = [n[0] for n in names[1:-2]]
    assert (
        blocks[:3] == ["blocks.0", "blocks.1.0", "blocks.1.1"] and len(blocks) == 17
    )  # a one-block stage is one unit
    assert sum(u.weights for u in units) == _weights(built.module)
    # the exported module wraps the model in its input normalization: the names stay the model's
    wrapped = with_normalization(built.module, built.preprocess.mean, built.preprocess.std)
    assert candidate_units(wrapped) == units


def test_choice_takes_gain_per_weight_within_the_budget():
    from mobile_export.quantize.sensitivity import MIN_GAIN_DB, Unit, choose_fp32_units

    units = [Unit(("a",), 100), Unit(("b",), 1000), Unit(("c",), 50), Unit(("d",), 10)]
    gains = [1.0, 3.0, 0.2, MIN_GAIN_DB / 2]  # per weight: a 0.01, b 0.003, c 0.004, d below noise
    assert choose_fp32_units(units, gains, 150) == [0, 2]
    assert choose_fp32_units(units, gains, 1200) == [0, 1, 2]
    assert choose_fp32_units(units, gains, 99) == [2]  # a does not fit; the next that does is taken
    assert choose_fp32_units(units, [-1.0] * 4, 10_000) == []  # float that does not help is not kept


def test_recipe_refuses_a_budget_outside_0_100():
    from mobile_export.errors import ExportError
    from mobile_export.quantize import QuantRecipe

    for bad in (0.0, -5.0, 150.0):
        with pytest.raises(ExportError, match="auto:PERCENT"):
            QuantRecipe(fp32_auto=bad)
    assert "fp32_auto" not in QuantRecipe().to_dict()  # old manifests' recipe keys unchanged
    assert QuantRecipe.from_dict(QuantRecipe(fp32_auto=7.5).to_dict()).fp32_auto == 7.5


@pytest.fixture(scope="module")
def trained():
    pytest.importorskip("executorch")
    pytest.importorskip("sklearn")
    import torch
    import train_small

    from mobile_export.executorch.lowering import with_normalization

    torch.manual_seed(0)
    model, meta, pre = train_small.load_checkpoint(TRAINED)
    data = train_small.load_dataset(meta["dataset"], meta["resolution"], seed=0, cache=False)
    rgb = lambda p: np.ascontiguousarray(p.astype(np.float32).transpose(0, 3, 1, 2) / 255.0)  # noqa: E731
    calibration = [rgb(data.train_x[i : i + 1]) for i in range(CALIBRATION)]
    return with_normalization(model, pre.mean, pre.std).eval(), calibration


def test_sweep_keeps_what_it_measured_helps_within_the_budget(trained, one_thread):
    import torch

    from mobile_export.quantize import QuantRecipe, quantize_pt2e

    module, calibration = trained
    q = quantize_pt2e(module, torch.zeros(1, 3, 64, 64), calibration, QuantRecipe(fp32_auto=5.0))
    report = q.sensitivity
    assert len(report["units"]) == 20 and report["images"] == CALIBRATION
    assert report["chosen"], report  # on this model some units are worth their float weights
    assert q.recipe.fp32_modules == tuple(report["chosen"]) and q.recipe.fp32_auto is None
    assert q.kept_fp32_nodes > 0
    assert report["chosen_weights"] <= 0.05 * report["total_weights"]
    gained = {tuple(u["modules"]): u["gain_db"] for u in report["units"]}
    assert all(gained[m] > 0 for m in gained if m[0] in report["chosen"])
    # measured again with all chosen units in float together: closer to the float model
    assert report["chosen_sqnr_db"] > report["base_sqnr_db"] + 0.2, report


def test_cli_parses_auto_and_refuses_a_bad_budget(cli, tmp_path):
    code, _, err = cli("v2-035", "--quantize", "int8", "--keep-fp32", "auto:lots", "--out", tmp_path / "a")
    assert code == 2 and "auto:PERCENT takes a number" in err and "Traceback" not in err
    code, _, err = cli("v2-035", "--quantize", "int8", "--keep-fp32", "auto:0", "--out", tmp_path / "b")
    assert code == 2 and "(0, 100]" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("v2-035", "--keep-fp32", "auto", "--out", tmp_path / "c")
    assert code == 2 and "add --quantize int8" in err
    assert not any(tmp_path.glob("*/*.pte"))


def test_cli_refuses_keep_fp16_without_w8a8_or_with_a_bad_share(cli, tmp_path):
    """--keep-fp16 (Core ML W8A8's counterpart of --keep-fp32) is checked before any export."""
    code, _, err = cli("v2-035", "--target", "coreml", "--keep-fp16", "auto", "--out", tmp_path / "a")
    assert code == 2 and "add --compress w8a8" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(
        "v2-035",
        "--target",
        "coreml",
        "--compress",
        "w8a8",
        "--keep-fp16",
        "auto:90",
        "--out",
        tmp_path / "b",
    )
    assert code == 2 and "outside 0-50" in err
    code, _, err = cli(
        "v2-035", "--target", "coreml", "--compress", "w8a8", "--keep-fp16", "some", "--out", tmp_path / "c"
    )
    assert code == 2 and "give auto or auto:PERCENT" in err and "Traceback" not in err
    assert not any(tmp_path.glob("*/*.mlpackage"))


def test_export_records_the_sweep_and_verify_rebuilds_the_choice(cli, tmp_path, one_thread):
    pytest.importorskip("executorch")
    from et_helpers import photo_folder

    folder = photo_folder(tmp_path / "photos", unreadable=0)
    out = tmp_path / "out"
    args = ["mobilenet_v2_035", "--target", "executorch", "--weights", TRAINED, "--resolution", 64]
    args += ["--quantize", "int8", "--calibration", folder, "--keep-fp32", "blocks.0,auto:3", "--out", out]
    code, _, err = cli(*args)
    assert code == 0, err
    assert "sensitivity sweep over 19 unit(s)" in err  # blocks.0 is named: not a candidate
    quant = json.loads((out / "manifest.json").read_text())["artifacts"][0]["quantization"]
    sweep = quant["fp32_sensitivity"]
    assert quant["fp32_modules"][0] == "blocks.0" and quant["fp32_modules"][1:] == sweep["chosen"]
    assert "fp32_auto" not in quant  # the manifest holds the choice; a rebuild never sweeps again
    assert sweep["budget_percent"] == 3.0 and sweep["chosen_percent"] <= 3.0
    assert ["blocks.0"] not in [u["modules"] for u in sweep["units"]]

    code, stdout, err = cli("verify", out / "mobilenet_v2_035_int8.pte", "--images", folder, "--json")
    assert code == 0, err
    report = json.dumps(json.loads(stdout))
    assert "rebuilt from the manifest" in report and '"vs_quantized": {' in report
