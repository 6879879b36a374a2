"""The quantized PyTorch model (convert_pt2e result) behind an int8 .pte, the second
reference of an int8 parity check: the runtime must match it to ~1 output step, while the
float model shows what quantization itself costs.

Right after an export the caller hands verify the exact model that was lowered (the export's
"quantized_model"). Otherwise it is rebuilt here: same weights, same recipe, same calibration
images (the bundled photos, or the recorded folder if it is still there); quantization is
deterministic, and the rebuilt output scale must equal the recorded one, else it is not used.
Learned recipes (AdaRound, distillation) are run again, and the rebuilt int8 weights must hash
to the recorded digest."""

from __future__ import annotations

from pathlib import Path

from ..manifest import ArtifactEntry
from ..targets.base import QuantizedReference


def rebuild(entry: dict, built) -> QuantizedReference:
    """The model, or None and why it cannot be rebuilt."""
    entry = ArtifactEntry.from_dict(entry)
    quant = entry.quantization or {}
    cal = quant.get("calibration") or {}
    folder = cal.get("folder")
    if cal.get("source") == "folder" and (not folder or not Path(folder).is_dir()):
        return QuantizedReference(
            None, f"unavailable: the calibration folder {folder!r} is not here to rebuild it"
        )
    model, how = _rebuild(entry, built, quant, cal, folder)
    return QuantizedReference(model, how)


def recipe_of(quant: dict):
    """The recipe a manifest's quantization section records. Files exported before the input
    normalization stayed in float (no "float_input" key) ran it in int8, and so does their
    rebuilt reference."""
    import dataclasses

    from ..quantize import QuantRecipe

    recipe = QuantRecipe.from_dict(quant)
    return recipe if "float_input" in quant else dataclasses.replace(recipe, float_input=False)


def _rebuild(entry, built, quant, cal, folder):
    import torch

    from ..quantize import load_calibration, quantize_pt2e
    from .lowering import with_normalization

    in_model = entry.normalized_in_model
    pre = built.preprocess
    model = with_normalization(built.module, pre.mean, pre.std) if in_model else built.module
    recipe = recipe_of(quant)
    shape = tuple(entry.input["shape"])
    if recipe.dynamic:  # no calibration: the same weights and recipe give the same graph
        quantized = quantize_pt2e(model, torch.zeros(shape), [], recipe)
        return quantized, "rebuilt from the manifest (same weights and recipe; dynamic activations)"
    calibration = load_calibration(
        folder if cal.get("source") == "folder" else None,
        pre,
        limit=int(cal.get("limit") or cal.get("images") or 64),
        normalized=not in_model,
        progress=False,
    )
    if cal.get("files") and [p.name for p in calibration.paths] != list(cal["files"]):
        return None, "unavailable: the calibration images differ from the ones recorded at export"
    distill_inputs = None
    if recipe.distill_epochs:
        images = quant.get("distillation_images") or {}
        if not images.get("folder") or not Path(images["folder"]).is_dir():
            return None, f"unavailable: the --qat folder {images.get('folder')!r} is not here to rebuild it"
        distill = load_calibration(
            images["folder"],
            pre,
            limit=int(images.get("images") or 1),
            normalized=not in_model,
            progress=False,
        )
        if distill.digest_record().get("files_sha256") != images.get("files_sha256"):
            return None, "unavailable: the --qat images differ from the ones recorded at export"
        distill_inputs = distill.inputs
    quantized = quantize_pt2e(
        model, torch.zeros(shape), calibration.inputs, recipe, distill_inputs=distill_inputs
    )
    learned = (quant.get("learned") or {}).get("weights_sha256")
    if learned is not None and quantized.learned.get("weights_sha256") != learned:
        return None, (
            "unavailable: the rebuilt learned int8 weights differ from the exported ones "
            "(AdaRound/distillation repeat exactly only on the same thread count and libraries)"
        )
    recorded = quant.get("output_scale")
    if (
        recorded is not None
        and quantized.output_scale is not None
        and abs(quantized.output_scale - recorded) > 1e-9 * max(1.0, abs(recorded))
    ):
        return (
            None,
            f"unavailable: the rebuilt output scale {quantized.output_scale:.6g} differs from the recorded {recorded:.6g}",
        )
    return quantized, "rebuilt from the manifest (same weights, recipe, calibration images and output scale)"
