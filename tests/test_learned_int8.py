"""Learned int8 recipes (issue 18): AdaRound (quantize/adaround.py) and distillation on the
converted graph (quantize/distill.py), on a trained model so the outputs depend on the image.

The claims tested: AdaRound lowers each layer's output error against the float model below
nearest rounding's; a learned recipe is deterministic (same seed, same int8 weights, checked by
a digest); the trainable twin computes exactly what the converted graph computes, before and
after training, so what is trained is what is lowered; the manifest records learned recipes and
leaves plain ones as they were; the CLI refuses the flags without int8 and a missing folder."""

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
ITERATIONS = 100  # enough for the rounding to settle on this small model; the CLI default is 500

pytest.importorskip("executorch")
pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def trained():
    import torch
    import train_small

    from mobile_export.executorch.lowering import with_normalization

    torch.manual_seed(0)
    model, meta, pre = train_small.load_checkpoint(TRAINED)
    data = train_small.load_dataset(meta["dataset"], meta["resolution"], seed=0, cache=False)
    rgb = lambda p: np.ascontiguousarray(p.astype(np.float32).transpose(0, 3, 1, 2) / 255.0)  # noqa: E731
    calibration = [rgb(data.train_x[i : i + 1]) for i in range(CALIBRATION)]
    held_out = [rgb(data.test_x[i : i + 1]) for i in range(0, len(data.test_x), 4)]
    return with_normalization(model, pre.mean, pre.std).eval(), calibration, held_out


def _quantize(trained, **recipe):
    import torch

    from mobile_export.quantize import QuantRecipe, quantize_pt2e

    module, calibration, _ = trained
    distill = calibration if recipe.get("distill_epochs") else None
    return quantize_pt2e(
        module, torch.zeros(1, 3, 64, 64), calibration, QuantRecipe(**recipe), distill_inputs=distill
    )


def _layer_errors(q, module, calibration) -> dict:
    """Each int8 conv's output error (pre-activation, squared, summed) against the float model
    on the calibration images, each layer fed the float model's own input, in graph order."""
    import torch

    from mobile_export.quantize.adaround import _float_weight, _int8_weight, dequantize_args
    from mobile_export.quantize.graph_walk import attr, walk

    inputs = {}
    names = {n.name: n for n in q.graph_module.graph.nodes if _int8_weight(n) is not None}
    with torch.no_grad():
        walk(
            q.float_graph_module,
            [torch.from_numpy(x) for x in calibration],
            lambda node, values, env: (
                inputs.__setitem__(node.name, (torch.cat(env[node.args[0]]), values))
                if node.name in names
                else None
            ),
        )
        errors = {}
        for name, (x, float_out) in inputs.items():
            node = names[name]
            dq = node.args[1]
            scale, _qmin, _qmax = dequantize_args(q.graph_module, dq)
            w = attr(q.graph_module, dq.args[0].target).to(torch.float32) * scale
            assert _float_weight(q.float_graph_module, name) is not None
            bias = attr(q.graph_module, node.args[2].target)
            y = torch.cat([node.target(x[i : i + 1], w, bias, *node.args[3:]) for i in range(len(x))])
            errors[name] = float((y - torch.cat(float_out)).pow(2).sum())
    return errors


def test_adaround_lowers_the_layer_error_and_is_deterministic(trained):
    from mobile_export.verify.metrics import sqnr_db
    from mobile_export.verify.reference import run_module

    module, calibration, _ = trained
    nearest = _quantize(trained)
    learned = _quantize(trained, rounding="adaround", rounding_iterations=ITERATIONS)
    report = learned.learned["rounding"]
    assert report["layers"] >= 30 and 0 < report["flipped_weights"] < 0.2 * report["weights"]
    assert report["kept_nearest"] >= 1  # the classifier: 16 images for 1,280 weights per output
    # the scales are calibration's, untouched
    assert learned.output_scale == nearest.output_scale
    # the stem sees the same (quantized) image in both: its rounding alone decides its error
    stem = next(iter(_layer_errors(nearest, module, calibration)))
    assert (
        _layer_errors(learned, module, calibration)[stem]
        < 0.9 * _layer_errors(nearest, module, calibration)[stem]
    )
    # later layers also make up for the error they are given: the whole model is closer to float
    reference = run_module(module, calibration)
    assert sqnr_db(reference, run_module(learned.graph_module, calibration)) > sqnr_db(
        reference, run_module(nearest.graph_module, calibration)
    )
    again = _quantize(trained, rounding="adaround", rounding_iterations=ITERATIONS)
    assert again.learned["weights_sha256"] == learned.learned["weights_sha256"]
    other_seed = _quantize(trained, rounding="adaround", rounding_iterations=ITERATIONS, seed=1)
    assert other_seed.learned["weights_sha256"] != learned.learned["weights_sha256"]
    assert nearest.learned == {}  # nothing learned, nothing recorded


def test_distillation_trains_the_graph_that_is_lowered(trained):
    import torch

    from mobile_export.quantize.distill import distill, trainable_twin
    from mobile_export.verify.metrics import sqnr_db

    module, calibration, held_out = trained
    float_state = {k: v.clone() for k, v in module.state_dict().items()}
    q = _quantize(trained)
    converted = q.graph_module
    x = [torch.from_numpy(h) for h in held_out[:40]]
    twin, weights, biases, _scales = trainable_twin(converted)
    with torch.no_grad():
        before = torch.cat([converted(v) for v in x])
        assert torch.equal(torch.cat([twin(v) for v in x]), before)  # the same forward, exactly
    report = distill(converted, module, calibration, epochs=3, learning_rate=1e-4)
    assert report.steps == 3 * -(-CALIBRATION // 16) and report.last_loss < report.first_loss
    twin_after, *_ = trainable_twin(converted)
    with torch.no_grad():
        after = torch.cat([converted(v) for v in x])
        assert torch.equal(torch.cat([twin_after(v) for v in x]), after)
        reference = torch.cat([module(v) for v in x]).numpy()
    assert not torch.equal(before, after)  # it trained
    # the float model (teacher and parity reference) is not touched: the graph has its own copy
    # (it once shared the classifier bias, which snapping and training then moved)
    assert all(torch.equal(v, float_state[k]) for k, v in module.state_dict().items())
    assert len(weights) >= 40 and len(biases) >= 40
    assert sqnr_db(reference, after.numpy()) > 15.0  # still the model, not a collapsed one


def test_distillation_learns_activation_scales_and_writes_them_back(trained):
    """LSQ-style: each group of activation quantize nodes that must share a scale learns one;
    afterwards every quantize and the dequantizes reading it carry the learned value, and the
    converted graph still computes exactly what the trained twin computed."""
    import torch

    from mobile_export.quantize.distill import activation_groups, distill, trainable_twin
    from mobile_export.quantize.graph_walk import calls

    module, calibration, held_out = trained
    converted = _quantize(trained).graph_module
    quantizes = lambda: {  # noqa: E731
        n.name: n.args[1]
        for n in converted.graph.nodes
        if calls(n, ("quantize_per_tensor",)) and not calls(n, ("dequantize",))
    }
    before = quantizes()
    groups = activation_groups(converted)
    assert sum(len(g) for g in groups) == len(before) and any(len(g) > 1 for g in groups)
    x = [torch.from_numpy(h) for h in held_out[:20]]
    twin, _w, _b, scales = trainable_twin(converted, learn_scales=True)
    with torch.no_grad():  # the twin with scales as parameters starts as the converted graph
        assert torch.equal(torch.cat([twin(v) for v in x]), torch.cat([converted(v) for v in x]))
    distill(converted, module, calibration, epochs=2, learning_rate=1e-4, scale_learning_rate=1e-2)
    after = quantizes()
    assert sum(after[k] != before[k] for k in before) >= len(groups) // 2, "the scales did not move"
    for group in groups:  # a shared scale stays shared
        assert len({after[name] for name in group}) == 1
    for n in converted.graph.nodes:
        if calls(n, ("dequantize_per_tensor",)) and n.args[0].name in after:
            assert n.args[1] == after[n.args[0].name]
    twin_after, *_ = trainable_twin(converted)
    with torch.no_grad():
        assert torch.equal(torch.cat([twin_after(v) for v in x]), torch.cat([converted(v) for v in x]))


def test_learned_recipe_in_the_manifest_and_plain_ones_unchanged():
    from mobile_export.quantize import QuantRecipe

    plain = QuantRecipe(bias_correction=True).to_dict()
    assert set(plain) == {"observer", "per_channel", "fp32_modules", "bias_correction", "float_input"}
    learned = QuantRecipe(rounding="adaround", distill_epochs=2, seed=3)
    d = learned.to_dict()
    assert d["rounding"] == "adaround" and d["distill_epochs"] == 2 and d["seed"] == 3
    assert QuantRecipe.from_dict(d) == learned and learned.learned and not QuantRecipe().learned


def test_cli_refuses_learned_flags_without_int8_and_a_missing_folder(cli, tmp_path):
    code, _, err = cli("v2-035", "--recipe", "adaround", "--out", tmp_path / "a")
    assert code == 2 and "add --quantize int8" in err
    code, _, err = cli("v2-035", "--quantize", "int8", "--qat", tmp_path / "nope", "--out", tmp_path / "o")
    assert code == 2, err
    assert "'--qat'" in err and "nope" in err and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("*.pte"))


def test_export_records_and_verify_rebuilds_a_learned_recipe(cli, tmp_path, one_thread):
    """Through the CLI on the trained digits model: an AdaRound + distillation int8 .pte. Its
    manifest records the recipe, the images and the learned weights' digest; a separate
    `verify` rebuilds the quantized reference (same digest) and compares the runtime with it."""
    from et_helpers import photo_folder

    folder = photo_folder(tmp_path / "photos", unreadable=0)
    out = tmp_path / "out"
    code, _, err = cli(
        "mobilenet_v2_035",
        "--target",
        "executorch",
        "--weights",
        TRAINED,
        "--resolution",
        64,
        "--quantize",
        "int8",
        "--calibration",
        folder,
        "--recipe",
        "adaround",
        "--qat",
        folder,
        "--qat-epochs",
        1,
        "--out",
        out,
    )
    assert code == 0, err
    assert "AdaRound learned" in err and "distilled on" in err
    entry = json.loads((out / "manifest.json").read_text())["artifacts"][0]
    quant = entry["quantization"]
    assert quant["rounding"] == "adaround" and quant["distill_epochs"] == 1 and quant["seed"] == 0
    images = quant["distillation_images"]
    assert images["images"] >= 5 and len(images["files_sha256"]) == 64 and "files" not in images
    learned = quant["learned"]
    assert learned["rounding"]["layers"] >= 40 and learned["distillation"]["epochs"] == 1
    assert len(learned["weights_sha256"]) == 64 and entry["parity"]["passed"]

    code, stdout, err = cli("verify", out / "mobilenet_v2_035_int8.pte", "--images", folder, "--json")
    assert code == 0, err
    report = json.dumps(json.loads(stdout))
    assert "rebuilt from the manifest" in report, report[:2000]
    assert '"vs_quantized": {' in report


@pytest.mark.slow
def test_adaround_on_the_fragile_photo_model(tmp_path, one_thread):
    """Issue 18's fragile model (MobileNetV2 0.35 on the 17-way photo task, fp16 fixture): the
    AdaRound .pte against the plain one, both run in the runtime on the 1,020 held-out crops.
    Measured (docs/int8_quality.md round 6): AdaRound raises logits SQNR by 0.5-0.8 dB and
    agreement to 98.0-98.5%; the issue's 99% is not reached by any recipe here."""
    import int8_quality

    fragile = TRAINED.parent / "mobilenet_v2_035_photos_64.safetensors"
    rows = {
        recipe: int8_quality.measure(fragile, recipe, 0, 64, tmp_path, {}) for recipe in ("plain", "adaround")
    }
    plain, learned = rows["plain"], rows["adaround"]
    detail = f"plain {plain.agreement:.2f}% {plain.sqnr_db:.2f} dB, adaround {learned.agreement:.2f}% {learned.sqnr_db:.2f} dB"
    print(detail)
    assert learned.sqnr_db > plain.sqnr_db + 0.2, detail
    assert learned.agreement >= 98.0 and learned.drop <= 0.3, detail
    assert learned.pte_vs_quantized_pytorch_agreement >= 99.0, detail
