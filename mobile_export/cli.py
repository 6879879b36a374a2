"""Command line: parses, calls the library, turns typed errors into one line and an exit
code (1 failure, 2 usage). `--json` prints one JSON document on stdout; logs go to stderr.
Heavy libraries load only inside the commands that need them."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import MobileExportError
from .models.registry import all_specs, get_spec


class CliError(click.ClickException):
    """One line on stderr, no traceback, with the library error's exit code."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def _run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except MobileExportError as exc:
        raise CliError(
            str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__, exc.exit_code
        ) from None
    except KeyboardInterrupt:
        raise CliError("interrupted; no half-written file was kept", 130) from None


def _log(msg: str) -> None:
    click.echo(msg, err=True)


def _emit(as_json: bool, doc, human) -> None:
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
    else:
        human(doc)


# --- shared option groups (decorators, in the style of sqlite-utils' cli.py) ----------------


def json_option(help: str | None = "One JSON document for machines."):
    """`--json`: declared here once; each command says what the document is."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def _stack(*decorators):
    def apply(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


def _collect(name: str, build, params: tuple[str, ...]):
    """Replace the command's keyword arguments `params` by one argument `name` = build(**them);
    a typed error from building becomes the CLI's one-line message."""

    def decorator(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            kwargs[name] = _run(build, **{p: kwargs.pop(p) for p in params})
            return fn(*args, **kwargs)

        return wrapper

    return decorator


_WEIGHTS_HELP = (
    "imagenet[:TAG] (published checkpoint), random (seeded, input-dependent), example (a small trained "
    "v2 in the package, offline), or a local .pth/.pt/.safetensors file."
)


def _model_options(weights, seed, num_classes, labels_file, resolution):
    from .pipeline import ModelOptions

    return ModelOptions(
        weights=weights, seed=seed, num_classes=num_classes, labels_file=labels_file, resolution=resolution
    )


def model_options(fn):
    """How to build the model: weights, seed, classes, labels, resolution -> `build` (pipeline.ModelOptions)."""
    return _stack(
        click.option(
            "--weights", default=None, help=_WEIGHTS_HELP + " Default: imagenet where published, else random."
        ),
        click.option(
            "--seed", type=int, default=0, show_default=True, help="Seed for random weights and sampling."
        ),
        click.option(
            "--num-classes",
            type=click.IntRange(min=1),
            default=None,
            help="Classifier size (fine-tuned models).",
        ),
        click.option(
            "--labels",
            "labels_file",
            type=click.Path(path_type=Path),
            default=None,
            help="Text file, one label per line.",
        ),
        click.option(
            "--resolution",
            type=click.IntRange(32, 4096),
            default=None,
            help="Input size (default: the variant's).",
        ),
    )(_collect("build", _model_options, ("weights", "seed", "num_classes", "labels_file", "resolution"))(fn))


def _keep_fp32_entries(text: str) -> tuple[list[str], float | None]:
    """--keep-fp32 MODULES[,auto[:PERCENT]] -> (module names, sweep budget or None)."""
    from .quantize.sensitivity import DEFAULT_BUDGET_PERCENT

    modules, auto = [], None
    for entry in (e.strip() for e in text.split(",")):
        if entry == "auto":
            auto = DEFAULT_BUDGET_PERCENT
        elif entry.startswith("auto:"):
            try:
                auto = float(entry[5:].rstrip("%"))
            except ValueError:
                raise click.UsageError(
                    f"--keep-fp32 {entry!r}: auto:PERCENT takes a number, e.g. auto:5 (5% of the weights)"
                ) from None
        elif entry:
            modules.append(entry)
    return modules, auto


def _executorch_options(
    quantize, keep_fp32, bias_correction, recipe_name, qat, qat_epochs, allow_partial, fast_gelu, bundled
):
    from .targets import ExecuTorchOptions, Gelu

    recipe = None  # ExecuTorchOptions refuses a recipe without --quantize int8
    if keep_fp32 is not None or bias_correction or recipe_name != "ptq" or qat is not None:
        modules, auto = _keep_fp32_entries(keep_fp32 or "")
        recipe = {
            "fp32_modules": modules,
            "fp32_auto": auto,
            "bias_correction": bias_correction,
            "rounding": "adaround" if recipe_name == "adaround" else "nearest",
            "activations": "dynamic" if recipe_name == "dynamic" else "static",
            "distill_epochs": qat_epochs if qat is not None else 0,
        }
    return ExecuTorchOptions(
        quantize=quantize,
        recipe=recipe,
        distill_folder=qat,
        gelu=Gelu.FAST if fast_gelu else Gelu.EXACT,
        allow_partial=allow_partial,
        bundled=bundled,
    )


calibration_option = click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of images for int8 / W8A8 calibration (default: the bundled photos, with a warning).",
)


def executorch_options(fn):
    """The ExecuTorch group -> `executorch` (targets.ExecuTorchOptions, checked when built)."""
    return _stack(
        click.option(
            "--quantize",
            type=click.Choice(["none", "int8"]),
            default="none",
            show_default=True,
            help="ExecuTorch: int8 post-training static quantization (XNNPACK).",
        ),
        click.option(
            "--keep-fp32",
            default=None,
            metavar="MODULES",
            help="ExecuTorch int8: comma-separated module names or globs kept in float (e.g. conv_stem,bn1,blocks.0); "
            "auto[:PERCENT] picks them by a sensitivity sweep on the calibration images, within PERCENT of the "
            "weights (default 5).",
        ),
        click.option(
            "--bias-correction",
            is_flag=True,
            help="ExecuTorch int8: correct each layer's bias on the calibration images.",
        ),
        click.option(
            "--recipe",
            "recipe_name",
            type=click.Choice(["ptq", "adaround", "dynamic"]),
            default="ptq",
            show_default=True,
            help="ExecuTorch int8: ptq (calibrated activations, nearest rounding), adaround (rounding learned "
            "per layer on the calibration images, no labels; ~1 min for V2 at 64 px) or dynamic (activations "
            "quantized per image at run time, no calibration; depthwise convs in fp32).",
        ),
        click.option(
            "--qat",
            type=click.Path(path_type=Path, exists=True, file_okay=False),
            default=None,
            metavar="DIR",
            help="ExecuTorch int8: fine-tune the int8 model on these unlabelled images by distillation "
            "from the float model (the graph that is lowered is the one trained).",
        ),
        click.option(
            "--qat-epochs",
            type=click.IntRange(1, 100),
            default=4,
            show_default=True,
            help="ExecuTorch int8 --qat: passes over the images.",
        ),
        click.option(
            "--allow-partial",
            is_flag=True,
            help="ExecuTorch: accept compute ops outside the XNNPACK / Core ML delegate.",
        ),
        click.option(
            "--fast-gelu",
            is_flag=True,
            help="ExecuTorch: run tanh GELU (V5) as XNNPACK's erf GELU: ~1.17x faster, ~67 instead of ~114 dB vs PyTorch.",
        ),
        click.option(
            "--bundled",
            is_flag=True,
            help="ExecuTorch: also write a .bpte with reference inputs and outputs.",
        ),
    )(
        _collect(
            "executorch",
            _executorch_options,
            (
                "quantize",
                "keep_fp32",
                "bias_correction",
                "recipe_name",
                "qat",
                "qat_epochs",
                "allow_partial",
                "fast_gelu",
                "bundled",
            ),
        )(fn)
    )


def _keep_fp16_percent(text: str | None) -> float | None:
    """--keep-fp16 auto[:PERCENT] -> the percent of W8A8 activation tensors left fp16."""
    from .targets.base import KEEP_FP16_DEFAULT_PERCENT as DEFAULT_PERCENT

    if text is None:
        return None
    if text == "auto":
        return DEFAULT_PERCENT
    if text.startswith("auto:"):
        try:
            return float(text[5:].rstrip("%"))
        except ValueError:
            pass
    raise click.UsageError(
        f"--keep-fp16 {text!r}: give auto or auto:PERCENT, e.g. auto:10 (10% of the activation tensors)"
    )


def _coreml_options(precision, compress, size_budget, keep_fp16, ios, input_kind, logits, compute_units):
    from .targets import CoreMLOptions

    return CoreMLOptions(
        precision=precision,
        compress=compress,
        deployment_target=ios,
        input_kind=input_kind,
        classifier=not logits,
        size_budget=size_budget,
        compute_units=compute_units,
        fp16_activations=_keep_fp16_percent(keep_fp16),
    )


def coreml_options(fn):
    """The Core ML group -> `coreml` (targets.CoreMLOptions, checked when built)."""
    return _stack(
        click.option(
            "--precision",
            type=click.Choice(["fp16", "fp32"]),
            default=None,
            help="Core ML / Core ML delegate compute precision (default fp16).",
        ),
        click.option(
            "--compress",
            type=click.Choice(["none", "int8", "palettize4", "palettize6", "palettize-auto", "w8a8"]),
            default="none",
            show_default=True,
            help="Core ML weight compression (palettize-auto: 2-8-bit palettes per layer by measured "
            "sensitivity; executorch-coreml: none or int8).",
        ),
        click.option(
            "--size-budget",
            type=click.FloatRange(0.05, 0.5),
            default=0.15,
            show_default=True,
            help="Core ML palettize-auto: weights' size as a fraction of their fp32 size.",
        ),
        click.option(
            "--keep-fp16",
            default=None,
            metavar="auto[:PERCENT]",
            help="Core ML w8a8: leave the activations whose int8 rounding costs most (measured on the "
            "calibration images) in fp16, up to PERCENT of them (default 10).",
        ),
        click.option(
            "--ios",
            "ios",
            type=click.Choice(["16", "17", "18"]),
            default=None,
            help="Core ML minimum iOS (default: fits --compress).",
        ),
        click.option(
            "--input",
            "input_kind",
            type=click.Choice(["image", "tensor"]),
            default="image",
            show_default=True,
            help="Core ML input: an image (pixel buffer) or a float tensor like the .pte.",
        ),
        click.option(
            "--logits",
            is_flag=True,
            help="Core ML: raw logits instead of a classifier with labels and probabilities.",
        ),
        click.option(
            "--compute-units",
            type=click.Choice(["all", "cpu_and_ne", "cpu_only", "cpu_and_gpu"]),
            default="all",
            show_default=True,
            help="executorch-coreml: the Core ML compute units stored in the .pte's compile specs.",
        ),
    )(
        _collect(
            "coreml",
            _coreml_options,
            (
                "precision",
                "compress",
                "size_budget",
                "keep_fp16",
                "ios",
                "input_kind",
                "logits",
                "compute_units",
            ),
        )(fn)
    )


class ModelGroup(click.Group):
    """`mobile-export v2 --target coreml` means `mobile-export export v2 --target coreml`."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "export", self.commands["export"], args
        return super().resolve_command(ctx, args)

    def format_usage(self, ctx, formatter):
        formatter.write_usage(
            ctx.command_path,
            "MODEL --target executorch|coreml|all [OPTIONS]\n       mobile-export COMMAND [ARGS]...",
        )


@click.group(cls=ModelGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mobile-export")
@click.option(
    "--warnings",
    "show_warnings",
    is_flag=True,
    envvar="MOBILE_EXPORT_WARNINGS",
    help="Show the backends' Python warnings (hidden by default: they are not about your model).",
)
def main(show_warnings):
    """Export MobileNets (V1-V5) to ExecuTorch .pte and Core ML .mlpackage, with proven parity.

    \b
    Examples:
      mobile-export list
      mobile-export v2 --target coreml
      mobile-export v3-small --target executorch --quantize int8 --calibration photos/
      mobile-export verify exports/mobilenet_v2_100/mobilenet_v2_100_fp32.pte
    """
    if not show_warnings:
        import warnings

        from .quiet import hide_backend_noise

        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category)
        hide_backend_noise()  # named backend log lines (mobile_export/quiet.py), not all logging


# --- list / info -----------------------------------------------------------------------


def _fmt_int(n: int) -> str:
    return f"{n:,}"


@main.command("list")
@json_option()
def list_cmd(as_json):
    """Every variant with its published facts and weight sources."""
    from .models.example import EXAMPLE

    rows = [
        dict(s.to_dict(), example=EXAMPLE.to_dict() if s.name == EXAMPLE.model else None) for s in all_specs()
    ]

    def human(rows):
        header = f"{'name':<32} {'alias':<18} {'res':>4} {'params':>12} {'MMACs':>8} {'top-1':>6}  weights"
        click.echo(header)
        click.echo("-" * len(header))
        for r in rows:
            w = ",".join(f"{x['format']}:{x['tag']}" for x in r["weights"]) or "random only"
            w += ",example" if r["example"] else ""
            top1 = f"{r['top1']:.1f}" if r["top1"] is not None else "-"
            click.echo(
                f"{r['name']:<32} {r['aliases'][0]:<18} {r['resolution']:>4} {_fmt_int(r['params']):>12} "
                f"{r['mmacs']:>8.1f} {top1:>6}  {w}"
            )
        click.echo(
            f"\nexample: --weights example ({EXAMPLE.model}, offline) is trained on {EXAMPLE.trained_on}; "
            f"held-out top-1 {EXAMPLE.held_out_top1}%"
        )

    _emit(as_json, rows, human)


@main.command()
@click.argument("model")
@json_option()
def info(model, as_json):
    """Facts, preprocessing contract and checkpoints of one variant."""
    from .models.example import EXAMPLE

    spec = _run(get_spec, model)
    doc = dict(spec.to_dict(), example=EXAMPLE.to_dict() if spec.name == EXAMPLE.model else None)

    def human(d):
        for key in (
            "name",
            "aliases",
            "family",
            "variant",
            "width",
            "resolution",
            "params",
            "mmacs",
            "top1",
            "top1_source",
            "paper",
            "reference",
            "output",
            "default_weights",
        ):
            val = d[key]
            if isinstance(val, list):
                val = ", ".join(val)
            click.echo(f"{key:<16} {val}")
        p = d["preprocess"]
        click.echo(
            f"{'preprocess':<16} resize {p['resize']} -> crop {p['crop']} ({p['interpolation']}), "
            f"mean {p['mean']}, std {p['std']}"
        )
        for w in d["weights"]:
            click.echo(f"{'weights':<16} imagenet:{w['tag']} ({w['format']}, top-1 {w['top1']}) {w['url']}")
        if d["example"]:
            e = d["example"]
            click.echo(
                f"{'weights':<16} example (in the package, {e['classes']} classes, {e['resolution']}px, held-out "
                f"top-1 {e['held_out_top1']}%): trained on {e['trained_on']}"
            )

    _emit(as_json, doc, human)


# --- export ----------------------------------------------------------------------------


@main.command()
@click.argument("model")
@click.option(
    "--target",
    type=click.Choice(["executorch", "coreml", "executorch-coreml", "all"]),
    default="all",
    show_default=True,
    help="executorch: .pte on XNNPACK (CPU); coreml: .mlpackage; executorch-coreml: .pte on ExecuTorch's Core ML "
    "delegate (iOS); all: executorch and coreml.",
)
@model_options
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Output folder (default: exports/MODEL)."
)
@click.option("--force", is_flag=True, help="Replace artifacts that already exist.")
@executorch_options
@calibration_option
@click.option(
    "--calibration-limit",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Images used for calibration.",
)
@click.option(
    "--normalize-outside", is_flag=True, help="Do not bake mean/std into the model; the app normalizes."
)
@coreml_options
@click.option("--no-verify", is_flag=True, help="Skip the parity check after export.")
@click.option(
    "--images",
    type=click.Path(path_type=Path),
    default=None,
    help="Images for the parity check (default: bundled photos).",
)
@click.option(
    "--min-agreement",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Parity: lowest top-1 agreement with PyTorch to accept (0-1; default: the precision's row).",
)
@click.option(
    "--accept-input-independent",
    is_flag=True,
    help="Parity: pass even if the reference outputs barely depend on the image (e.g. random weights).",
)
@click.option(
    "--bundle",
    "bundle_app",
    type=click.Choice(["android", "ios"]),
    default=None,
    help="Copy the result into a demo app.",
)
@click.option(
    "--mean",
    default=None,
    metavar="R,G,B",
    help="Preprocessing the weights were trained with (timm pretrained_cfg 'mean'), e.g. 0.485,0.456,0.406.",
)
@click.option(
    "--std", default=None, metavar="R,G,B", help="Preprocessing std (positive), e.g. 0.229,0.224,0.225."
)
@click.option(
    "--interpolation",
    type=click.Choice(["bilinear", "bicubic", "nearest"]),
    default=None,
    help="Resize filter the weights were trained with.",
)
@click.option(
    "--crop-pct", type=float, default=None, help="Center-crop fraction (crop / resize, e.g. 0.875)."
)
@json_option("Print the manifest as JSON on stdout.")
def export(
    model,
    target,
    build,
    out,
    force,
    executorch,
    calibration,
    calibration_limit,
    normalize_outside,
    coreml,
    no_verify,
    images,
    min_agreement,
    accept_input_independent,
    bundle_app,
    mean,
    std,
    interpolation,
    crop_pct,
    as_json,
):
    """Export MODEL (name or alias; see `list`) to .pte and/or .mlpackage."""
    from dataclasses import asdict

    from .models.contract import ContractOverride
    from .pipeline import ExportRequest, run_export
    from .targets import ExportOptions

    spec = _run(get_spec, model)
    contract = _run(ContractOverride.from_text, mean, std, interpolation, crop_pct)
    options = _run(
        ExportOptions.of,
        executorch,
        coreml,
        calibration=calibration,
        calibration_limit=calibration_limit,
        normalize_in_model=not normalize_outside,
        seed=build.seed,
    )
    request = ExportRequest(
        model=spec.name,
        target=target,
        out=out or Path("exports") / spec.name,
        force=force,
        verify=not no_verify,
        images=images,
        options=options,
        contract=contract,
        min_agreement=min_agreement,
        accept_input_independent=accept_input_independent,
        **asdict(build),
    )
    manifest = _run(run_export, request, log=_log)
    if bundle_app:
        from .bundle import bundle_artifacts

        paths = [request.out / a["file"] for a in manifest["artifacts"]]
        _run(bundle_artifacts, paths, app=bundle_app, log=_log)

    def human(m):
        for a in m["artifacts"]:
            parity = a.get("parity") or {}
            status = "verified" if parity.get("passed") else ("not verified" if not parity else "FAILED")
            click.echo(
                f"{request.out / a['file']}  {a['bytes']:,} bytes  sha256 {a['sha256'][:12]}  {status}"
            )
        click.echo(f"{request.out / 'manifest.json'}")

    _emit(as_json, manifest, human)


# --- verify ----------------------------------------------------------------------------


@main.command()
@click.argument("artifacts", metavar="ARTIFACT...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--images",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of real images (default: the project config's, else bundled photos).",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many images.")
@click.option("--per-layer", is_flag=True, help="Also report where the error enters, layer by layer.")
@click.option(
    "--report",
    "--report-dir",
    "report_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for the per-layer table and picture.",
)
@click.option(
    "--weights", default=None, help="Reference weights if the manifest's are not reachable. " + _WEIGHTS_HELP
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Project limits file (default: the nearest mobile-export.toml or pyproject.toml [tool.mobile-export]).",
)
@click.option(
    "--min-sqnr",
    type=float,
    default=None,
    help="Minimum SQNR vs float in dB (overrides config and built-in).",
)
@click.option("--min-cosine", type=float, default=None, help="Minimum cosine similarity vs float.")
@click.option("--min-agreement", type=float, default=None, help="Minimum top-1 agreement vs float (0-1).")
@click.option(
    "--junit",
    "junit_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write a JUnit XML file, one test case per artifact (for CI).",
)
@click.option(
    "--accept-input-independent",
    is_flag=True,
    help="Pass even if the reference outputs barely depend on the image (e.g. random weights).",
)
@click.option(
    "--cpu",
    "cpus",
    default=None,
    metavar="CPUS",
    help="Also run each .pte on these emulated ARM CPUs (comma-separated, e.g. cortex-a55,cortex-a76,"
    "cortex-a710; needs `mobile-export setup-arm`).",
)
@json_option("One JSON report on stdout (a list for several artifacts).")
def verify(
    artifacts,
    images,
    limit,
    per_layer,
    report_dir,
    weights,
    config_file,
    min_sqnr,
    min_cosine,
    min_agreement,
    junit_file,
    accept_input_independent,
    cpus,
    as_json,
):
    """Prove each ARTIFACT (.pte or .mlpackage) computes what the PyTorch model computes.

    Limits: the built-in table, overridden by the project's [tool.mobile-export] table
    (pyproject.toml or mobile-export.toml, found upwards from the artifact), overridden by
    --min-* flags. Exit 1 when any artifact fails; GitHub annotations when GITHUB_ACTIONS=true."""
    from .errors import ConfigError
    from .gate import annotations
    from .gate.check import check_artifact, config_for, explain
    from .gate.junit import case_from_report, write_junit
    from .verify import format_report

    cli_limits = {"min-sqnr": min_sqnr, "min-cosine": min_cosine, "min-agreement": min_agreement}
    arm_cpus = _arm_cpus(cpus) if cpus is not None else None
    reports = []
    for artifact in artifacts:
        try:
            config = config_for(artifact, config_file)
            report = check_artifact(
                artifact,
                config=config,
                cli_limits=cli_limits,
                images=images,
                limit=limit,
                weights=weights,
                per_layer=per_layer,
                report_dir=report_dir,
                cpus=arm_cpus,
                accept_input_independent=accept_input_independent,
                log=_log,
            )
        except ConfigError as exc:
            raise CliError(str(exc).splitlines()[0], exc.exit_code) from None
        except MobileExportError as exc:
            if len(artifacts) == 1 and junit_file is None:
                raise CliError(
                    str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__, exc.exit_code
                ) from None
            report = {
                "artifact": Path(artifact).name,
                "path": str(artifact),
                "passed": False,
                "error": str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__,
                "failures": [],
            }
        reports.append(report)
        if not report["passed"] and not report.get("error"):
            _log(explain(report))
        if annotations.enabled():
            line = annotations.for_report(
                report, explain(report) if not report["passed"] and not report.get("error") else ""
            )
            if line:
                click.echo(line, err=as_json)
    if junit_file is not None:
        _run(write_junit, junit_file, "mobile-export verify", [case_from_report(r) for r in reports])

    def human(rs):
        for r in rs:
            if r.get("skipped"):
                click.echo(f"{r['artifact']}: SKIPPED ({r['skipped']})")
            elif r.get("error"):
                click.echo(f"{r['artifact']}: ERROR ({r['error']})")
            else:
                click.echo(format_report(r))

    _emit(as_json, reports[0] if len(reports) == 1 else reports, lambda doc: human(reports))
    bad = [r for r in reports if not r["passed"]]
    if len(reports) == 1 and bad and bad[0].get("error"):
        raise CliError(bad[0]["error"], 1)
    if len(reports) == 1 and bad:
        raise CliError("parity check failed: " + "; ".join(bad[0].get("failures", [])), 1)
    if bad:
        raise CliError(
            f"parity check failed for {len(bad)} of {len(reports)} artifacts: "
            + ", ".join(r["artifact"] for r in bad),
            1,
        )


# --- eval ------------------------------------------------------------------------------


@main.command("eval")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--dataset",
    type=click.Path(path_type=Path),
    required=True,
    help="Labelled images: class folders, a flat folder + labels.csv (file,label), or ImageNet val "
    "(ILSVRC2012_val_*.JPEG + val.txt | LOC_val_solution.csv | the devkit ground truth + meta.mat).",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many images.")
@click.option(
    "--every",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Every K-th image in a fixed order.",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for report.md/.json/.html and predictions.csv (also holds the resume cache).",
)
@click.option(
    "--weights", default=None, help="Reference weights if the manifest's are not reachable. " + _WEIGHTS_HELP
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="auto",
    default=None,
    metavar="[ADDRESS]",
    help="Run on a Ray cluster (pip install 'mobile-export[cluster]'); no ADDRESS: RAY_ADDRESS or a local one.",
)
@click.option(
    "--junit",
    "junit_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write a JUnit XML file: one test case per artifact, failed when its top-1 drop exceeds the "
    "project's max-top1-drop ([tool.mobile-export]).",
)
@click.option(
    "--max-top1-drop",
    type=float,
    default=None,
    metavar="POINTS",
    help="Exit 1 (and fail its --junit case) when an artifact's top-1 drop exceeds POINTS; overrides the "
    "project's max-top1-drop.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Project limits file (for --junit).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON report on stdout.")
def eval_cmd(
    artifacts,
    dataset,
    limit,
    every,
    report_dir,
    weights,
    ray_address,
    junit_file,
    max_top1_drop,
    config_file,
    as_json,
):
    """Top-1/top-5 of ARTIFACT(s) of one model and of its PyTorch reference on labelled images."""
    from .eval import EvalOptions, build_report, format_text, run_eval, write_report

    options = _run(
        EvalOptions, dataset=dataset, limit=limit, every=every, report_dir=report_dir, weights=weights
    )
    executor = None
    if ray_address is not None:
        from .cluster import RayExecutor

        executor = _run(RayExecutor, None if ray_address == "auto" else ray_address)

    def progress(total):
        from tqdm import tqdm

        return tqdm(total=total, unit="img", desc="eval", file=sys.stderr, dynamic_ncols=True)

    outcome = _run(run_eval, list(artifacts), options, executor=executor, progress=progress)
    report = _run(build_report, outcome, options)
    if report_dir is not None:
        written = _run(write_report, report, outcome, report_dir)
        _log("wrote " + ", ".join(str(p) for p in written))
    cases = []
    if junit_file is not None or max_top1_drop is not None:
        from .gate.junit import eval_cases, write_junit

        cases = _run(eval_cases, report, config_file, max_top1_drop)
        if junit_file is not None:
            _run(write_junit, junit_file, "mobile-export eval", cases)
    _emit(as_json, report, lambda r: click.echo(format_text(r)))
    failed = [c for c in cases if c.failure]
    if failed:
        raise CliError("top-1 drop over the project limit: " + "; ".join(c.failure for c in failed), 1)


# --- bundle ----------------------------------------------------------------------------


@main.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--app", type=click.Choice(["android", "ios"]), required=True)
@click.option(
    "--app-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="App project folder (default: the demo app).",
)
@click.option(
    "--allow-older-runtime",
    is_flag=True,
    help="Bundle a .pte even when the app pins an older ExecuTorch runtime than the one that wrote it.",
)
@json_option(None)
def bundle(artifacts, app, app_dir, allow_older_runtime, as_json):
    """Copy artifacts, labels and manifest into the Android or iOS demo app."""
    from .bundle import bundle_artifacts, format_changes

    changes = _run(
        bundle_artifacts,
        list(artifacts),
        app=app,
        app_dir=app_dir,
        allow_older_runtime=allow_older_runtime,
        log=_log,
    )
    _emit(as_json, changes, lambda c: click.echo(format_changes(c)))


# --- matrix ----------------------------------------------------------------------------


def _split(values) -> list[str] | None:
    items = [v.strip() for value in values for v in value.split(",") if v.strip()]
    return items or None


@main.command()
@click.option(
    "--models",
    multiple=True,
    default=("*",),
    show_default=True,
    help="Names, aliases or globs (comma-separated or repeated).",
)
@click.option(
    "--formats",
    multiple=True,
    help="Formats or globs, e.g. et-fp32,coreml-* (default: every format this install has).",
)
@click.option(
    "--resolution",
    multiple=True,
    help="N: one input size for every model; MODEL=N: that model's (names, aliases or globs; "
    "repeatable), e.g. --resolution 'v5-*=256' (default: each model's own).",
)
@click.option(
    "--images",
    type=click.Path(path_type=Path),
    default=None,
    help="Images for the parity checks (default: bundled photos).",
)
@calibration_option
@click.option(
    "--weights",
    multiple=True,
    help="random (BN-woken synthetic, the default), example, or a checkpoint file; MODEL=...: that "
    "model's (repeatable), e.g. --weights v2=trained.safetensors. Lossy formats' parity means most on trained weights.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("matrix"),
    show_default=True,
    help="Folder for the cell cache, matrix.json, matrix.md and matrix.html.",
)
@click.option(
    "--publish",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the table between the markers of this page (e.g. docs/matrix.md).",
)
@click.option(
    "--against",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="A previous matrix.json: print what changed (lowering, parity drops > 3 dB, latency ratio > 10%).",
)
@click.option(
    "--bench-runs",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Timed runs per latency measurement.",
)
@click.option(
    "--keep-artifacts", is_flag=True, help="Keep every exported file (default: only each model's fp32 .pte)."
)
@click.option(
    "--accept-code",
    multiple=True,
    metavar="VERSION",
    help='Also use cached cells an earlier code version made (its "code" in matrix.json, e.g. '
    "0.1.0+bfb6057334d659ae; repeatable); the table says which cells came from it.",
)
@click.option(
    "--cached-only", is_flag=True, help="Run nothing: tabulate the cache; cells not in it show as not run."
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="auto",
    default=None,
    metavar="[ADDRESS]",
    help="Shard models across a Ray cluster (pip install 'mobile-export[cluster]'); no value: auto.",
)
@json_option("The matrix as one JSON document on stdout.")
def matrix(
    models,
    formats,
    resolution,
    images,
    calibration,
    weights,
    out,
    publish,
    against,
    bench_runs,
    keep_artifacts,
    accept_code,
    cached_only,
    ray_address,
    as_json,
):
    """Every MobileNet in every format: export, verify, time; cached, resumable, diffable."""
    import json as json_mod

    from .matrix import MatrixRequest, run_matrix
    from .matrix.report import diff, write_outputs
    from .matrix.run import parse_resolutions, parse_weights

    old = None
    if against is not None:
        try:
            old = json_mod.loads(against.read_text())
        except ValueError:
            raise CliError(
                f"{against} is not a matrix JSON file; pass the matrix.json of an earlier run", 2
            ) from None
    one_resolution, per_model = _run(parse_resolutions, _split(resolution) or [])
    one_weights, model_weights = _run(parse_weights, _split(weights) or [])
    request = MatrixRequest(
        models=_split(models) or ["*"],
        formats=_split(formats),
        resolution=one_resolution,
        model_resolutions=per_model,
        weights=one_weights or "random",
        model_weights=model_weights,
        images=images,
        calibration=calibration,
        out=out,
        bench_runs=bench_runs,
        ray=ray_address,
        keep_artifacts=keep_artifacts,
        accept_code=tuple(accept_code),
        cached_only=cached_only,
    )
    doc = _run(run_matrix, request, log=_log)
    written = _run(write_outputs, doc, out, publish)
    changes = diff(old, doc) if old is not None else None
    if changes is not None:
        doc["changes"] = changes

    def human(d):
        counts: dict[str, int] = {}
        for row in d["cells"]:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        click.echo(f"{len(d['cells'])} cells: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        for path in written:
            click.echo(str(path))
        if changes is not None:
            click.echo(f"changes against {against}: {len(changes) or 'none'}")
            for line in changes:
                click.echo(f"  {line}")

    _emit(as_json, doc, human)


# --- bench -----------------------------------------------------------------------------


@main.command()
@click.argument("targets", nargs=-1, required=True, metavar="TARGET [MORE.pte]...")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option(
    "--cpu",
    "cpus",
    default=None,
    metavar="CPUS",
    help="Count executed instructions per inference of .pte files on these emulated ARM CPUs "
    "(comma-separated); with an fp32 and an int8 file of one model, also their ratio.",
)
@json_option(None)
def bench(targets, threads, runs, warmup, cpus, as_json):
    """Latency, size and efficiency of an artifact (or of MODEL's eager reference).

    With --cpu: instructions per inference on emulated ARM CPUs instead (deterministic; not a time)."""
    if cpus is not None:
        emulation = _arm_emulation()
        result = _run(emulation.bench, [Path(t) for t in targets], _arm_cpus(cpus), log=_log)
        _emit(as_json, result, lambda r: click.echo(emulation.format_bench(r)))
        return
    if len(targets) != 1:
        raise click.UsageError("bench takes one TARGET; several files only with --cpu")
    from .bench import bench_target, format_bench

    result = _run(bench_target, targets[0], threads=threads, runs=runs, warmup=warmup, log=_log)
    _emit(as_json, result, lambda r: click.echo(format_bench(r)))


# --- ARM emulation ---------------------------------------------------------------------


def _arm_emulation():
    """ARM emulation belongs to the XNNPACK .pte target (Target.cpu_emulation)."""
    from .targets import get_target

    return get_target("executorch").cpu_emulation()


def _arm_cpus(text: str):
    try:
        return _arm_emulation().parse_cpus(text)
    except MobileExportError as exc:
        raise click.UsageError(str(exc)) from None


@main.command("setup-arm")
@json_option(None)
def setup_arm_cmd(as_json):
    """Fetch (PyPI, Debian) and build what `verify/bench --cpu` need: QEMU >= 10, an arm64 sysroot,
    the executorch aarch64 runtime and our runner, into ~/.cache/mobile-export/arm (or $MOBILE_EXPORT_ARM_HOME)."""
    result = _run(_arm_emulation().setup, log=_log)

    def human(r):
        k = r["kit"]
        click.echo(
            f"ready: QEMU {k['qemu_version']}, executorch {k['executorch_version']} aarch64 runner in {k['home']} "
            f"({'fetched/built: ' + '; '.join(r['fetched']) if r['fetched'] else 'nothing to fetch'}; {r['seconds']} s)"
        )

    _emit(as_json, result, human)


def entrypoint() -> None:
    try:
        main(standalone_mode=True)
    except BrokenPipeError:  # `mobile-export list | head`
        sys.stderr.close()


if __name__ == "__main__":
    entrypoint()
