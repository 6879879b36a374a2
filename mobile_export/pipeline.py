"""The main job: build a model, export it to each target, verify, write the manifest.

Every artifact goes through a temporary path and one rename; the manifest is written
last, so a folder never lists an artifact that is not whole."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import manifest as mf
from .errors import MobileExportError, ParityError, UsageError
from .fsutil import atomic_path, check_destination, ensure_writable_dir, sha256_file, write_text_atomic
from .models import BuiltModel, ContractOverride, create_model, read_labels
from .models.contract import describe
from .targets import ExportOptions, expand, get_target

Log = Callable[[str], None]


@dataclass
class ModelOptions:
    """How to build the model (the CLI's model group): weights, seed, classes, labels, size."""

    weights: str | None = None
    seed: int = 0
    num_classes: int | None = None
    labels_file: Path | None = None
    resolution: int | None = None


@dataclass
class ExportRequest:
    model: str
    target: str = "all"
    out: Path = Path("exports")
    weights: str | None = None
    seed: int = 0
    num_classes: int | None = None
    labels_file: Path | None = None
    resolution: int | None = None
    force: bool = False
    verify: bool = True
    images: Path | None = None
    options: ExportOptions | None = None
    contract: ContractOverride | None = None  # --mean/--std/--interpolation/--crop-pct
    min_agreement: float | None = None  # parity: overrides the threshold row's top-1 agreement
    accept_input_independent: bool = False  # parity: pass even if the outputs barely depend on the image


def build(request: ExportRequest) -> BuiltModel:
    labels = read_labels(request.labels_file) if request.labels_file else None
    return create_model(
        request.model,
        weights=request.weights,
        seed=request.seed,
        num_classes=request.num_classes,
        labels=labels,
        resolution=request.resolution,
        contract=request.contract,
    )


def run_export(request: ExportRequest, log: Log = lambda _msg: None) -> dict:
    """Export `request.model` to the requested targets; returns the written manifest.

    Raises ParityError (after writing everything) when verification fails."""
    options = request.options or ExportOptions(seed=request.seed)
    targets = [get_target(name) for name in expand(request.target)]
    _refuse_unread_options(targets, options)
    out = Path(request.out)

    t0 = time.perf_counter()
    built = build(request)
    log(
        f"built {built.spec.name} ({built.weights.get('source')} weights, {built.resolution}px) in {time.perf_counter() - t0:.1f}s"
    )
    if built.contract_assumed and built.weights.get("source") == "file":
        log(
            f"preprocessing assumed: {describe(built.preprocess)}, from {built.contract_source}; if the weights were "
            "trained otherwise, state it with --mean/--std/--interpolation/--crop-pct or a config.json beside the file"
        )

    names = {t.name: out / t.artifact_name(built, options) for t in targets}
    for target in targets:  # refuse cheap problems before any heavy work
        target.validate(built, options)
        check_destination(names[target.name], request.force)
    ensure_writable_dir(out)  # only now: a refused request leaves no empty folder behind

    manifest = _existing_or_new(out, built)
    if built.labels:
        labels_text = "\n".join(built.labels) + "\n"
        labels_path = write_text_atomic(out / "labels.txt", labels_text)
        manifest["labels"] = {
            "file": "labels.txt",
            "count": len(built.labels),
            "sha256": sha256_file(labels_path),
        }

    written: list[Path] = []
    quantized: dict[Path, object] = {}  # the quantized PyTorch model lowered into an artifact, for verify
    for target in targets:
        dest = names[target.name]
        t1 = time.perf_counter()
        log(f"exporting {dest.name} ...")
        with atomic_path(dest, force=request.force) as tmp:
            fields = target.export(built, options, tmp, log)
            side = fields.pop("side_files", [])
            if fields.get("quantized_model") is not None:
                quantized[dest] = fields["quantized_model"]
            fields.pop("quantized_model", None)
            side_records = []
            for side_tmp in side:  # e.g. the .bpte beside the .pte
                final = out / Path(side_tmp).name
                with atomic_path(final, force=True) as side_dest:
                    Path(side_tmp).replace(side_dest)
                side_records.append(final)
        fields.setdefault("export", {})["seconds"] = round(time.perf_counter() - t1, 2)
        mf.upsert_artifact(manifest, mf.artifact_record(dest, **fields))
        for final in side_records:
            side_fields = dict(fields, format=final.suffix.lstrip("."))
            side_fields.pop("delegation", None)
            mf.upsert_artifact(manifest, mf.artifact_record(final, **side_fields))
        written.append(dest)
        log(
            f"wrote {dest} ({dest.stat().st_size if dest.is_file() else 'package'}) in {time.perf_counter() - t1:.1f}s"
        )
    mf.write_manifest(out, manifest)

    failed = []
    if request.verify:
        from .verify import verify_artifact

        for dest in written:
            report = verify_artifact(
                dest,
                images=request.images,
                reference=built,
                quantized=quantized.get(dest),
                log=log,
                min_agreement=request.min_agreement,
                accept_input_independent=request.accept_input_independent,
            )
            _, entry = mf.manifest_for(dest)
            manifest = mf.read_manifest(out)
            entry = next(a for a in manifest["artifacts"] if a["file"] == dest.name)
            entry["parity"] = report
            mf.write_manifest(out, manifest)
            if not report.get("passed", False):
                failed.append(f"{dest.name}: {'; '.join(report.get('failures', [])) or 'parity failed'}")
    if failed:
        raise ParityError("parity check failed for " + " | ".join(failed))
    return manifest


def _refuse_unread_options(targets, options: ExportOptions) -> None:
    """An option for a target that was not requested would be silently ignored (an fp16 or
    palettized .pte request would come back fp32, an int8 .mlpackage request fp16): refuse it."""
    names = {t.name for t in targets}
    if options.compute_units != "all" and "executorch-coreml" not in names:
        raise UsageError(
            f"--compute-units {options.compute_units} is stored only in a Core ML delegate .pte; add --target "
            "executorch-coreml (a .mlpackage leaves the compute units to the app)"
        )
    if "executorch-coreml" in names:
        return  # reads --precision, --compress, --ios and refuses --quantize itself (validate)
    if "executorch" not in names and options.quantize != "none":
        raise UsageError(
            f"--quantize {options.quantize} applies to ExecuTorch only and --target is coreml; "
            "for Core ML use --compress int8|w8a8|palettize4|palettize6, or add --target executorch or all"
        )
    if "coreml" in names:
        return
    core_ml_only = (
        ("--precision", options.precision, (None, "fp32")),
        ("--compress", options.compress, ("none",)),
        ("--ios", options.deployment_target, (None,)),
    )
    asked = [(flag, value) for flag, value, harmless in core_ml_only if value not in harmless]
    if asked:
        flag, value = asked[0]
        raise UsageError(
            f"{flag} {value} applies to Core ML only and --target is executorch; add --target coreml or all, "
            f"or drop {flag} (for an int8 .pte use --quantize int8)"
        )


def _existing_or_new(out: Path, built: BuiltModel) -> dict:
    """Keep the other artifacts of the same model already in `out` (e.g. a .pte exported
    before the .mlpackage); start fresh when the folder holds another model or no manifest."""
    fresh = mf.new_manifest(built)
    path = out / mf.FILENAME
    if not path.exists():
        return fresh
    try:
        old = mf.read_manifest(path)
    except MobileExportError:
        return fresh
    same = all(
        old["model"].get(k) == fresh["model"].get(k) for k in ("name", "resolution", "num_classes", "weights")
    )
    if same and old["preprocess"] == fresh["preprocess"]:
        fresh["artifacts"] = [a for a in old["artifacts"] if (out / a["file"]).exists()]
    return fresh
