"""Run the matrix: which cells, in which order, from the cache or fresh, locally or on Ray.

Cells of one model run one after another in one worker, the fp32 .pte first: it is the
baseline every other .pte of that model is timed against in the same worker. A cell whose
cache key (options, library versions, code) is unchanged is read back, so Ctrl-C and the
same command continue where the run stopped. `--accept-code` also reads back cells an earlier
code version made (each row says which), and `--cached-only` runs nothing: so a table can be
published from cells that several commits ran, and say so."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UsageError
from ..fsutil import write_text_atomic
from .cells import CellSpec, run_cell
from .formats import BASELINE, Format, resolve_formats

Log = Callable[[str], None]

# What a model's cells need at most, for Ray to place them where they fit (measured: V5-300m
# export + verify peaks near 8 GB; docs/v5.md). Everything else stays under 2 GB.
MEMORY_GB = {
    "mobilenet_v5_300m": 8.0,
    "mobilenet_v5_base": 5.0,
    "mobilenet_v4_conv_large": 3.0,
    "mobilenet_v4_hybrid_large": 3.0,
}
DEFAULT_MEMORY_GB = 2.0


@dataclass
class MatrixRequest:
    models: list[str] = field(default_factory=lambda: ["*"])
    formats: list[str] | None = None
    resolution: int | None = None  # None: each model at its own resolution
    # per-model sizes, {name, alias or glob: pixels}, over `resolution`: the big members at a
    # stated smaller size (the table shows it beside the model's own)
    model_resolutions: dict[str, int] = field(default_factory=dict)
    images: Path | None = None
    calibration: Path | None = None
    out: Path = Path("matrix")
    weights: str = "random"
    # per-model weights, {name, alias or glob: "random", "example" or a checkpoint file}, over
    # `weights`: trained checkpoints where they exist make the lossy formats' parity mean something
    model_weights: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    bench_runs: int = 20
    ray: str | None = None  # None: local; "auto" or an address: a Ray cluster
    keep_artifacts: bool = False
    # earlier code versions (as matrix.json's "code" names them) whose cached cells still count;
    # each such row says which code made it. Everything else in the key must match.
    accept_code: tuple[str, ...] = ()
    cached_only: bool = False  # run nothing: cells not in the cache are "not run"


@dataclass(frozen=True)
class ModelJob:
    """All cells of one model: the unit a worker runs."""

    model: str
    cells: tuple[CellSpec, ...]
    keys: tuple[str, ...]
    work: str
    bench_runs: int
    keep_artifacts: bool
    # per cell, (cache key, code version) of each accepted earlier code
    earlier: tuple[tuple[tuple[str, str], ...], ...] = ()
    cached_only: bool = False

    @property
    def memory_gb(self) -> float:
        return MEMORY_GB.get(self.model, DEFAULT_MEMORY_GB)


def resolve_models(patterns: list[str]) -> list:
    """Names, aliases or globs over either -> specs in registry order."""
    from ..models.registry import all_specs

    specs = all_specs()
    chosen = []
    for pattern in patterns:
        hits = [
            s
            for s in specs
            if fnmatch.fnmatchcase(s.name, pattern) or any(fnmatch.fnmatchcase(a, pattern) for a in s.aliases)
        ]
        if not hits:
            raise UsageError(f"model {pattern!r} matches no variant; see `mobile-export list`")
        chosen += [s for s in hits if s not in chosen]
    return [s for s in specs if s in chosen]


def _for_model(spec, per_model: dict, default):
    """The value of the first pattern that names `spec` (name, alias or glob), else `default`."""
    for pattern, value in per_model.items():
        if fnmatch.fnmatchcase(spec.name, pattern) or any(
            fnmatch.fnmatchcase(a, pattern) for a in spec.aliases
        ):
            return value
    return default


def resolution_for(spec, request: MatrixRequest) -> int:
    """The per-model size that names `spec`, else the one size, else its own."""
    return _for_model(spec, request.model_resolutions, request.resolution or spec.resolution)


def weights_for(spec, request: MatrixRequest) -> str:
    return _for_model(spec, request.model_weights, request.weights)


def _per_model(option: str, values: list[str], convert, form: str) -> tuple[object | None, dict]:
    """`--OPTION` values, "V" (every model) or "MODEL=V" -> (one value or None, {pattern: value});
    a model pattern that names no variant is a usage error now, not after hours."""
    one, per_model = None, {}
    for value in values:
        pattern, _, raw = value.rpartition("=")
        converted = convert(raw)
        if converted is None:
            raise UsageError(f"{option} {value!r}: give {form}")
        if pattern:
            resolve_models([pattern])
            per_model[pattern] = converted
        else:
            one = converted
    return one, per_model


def parse_resolutions(values: list[str]) -> tuple[int | None, dict[str, int]]:
    """`--resolution` values: "N" (every model) or "MODEL=N" with N from 32 to 4096."""

    def pixels(raw: str) -> int | None:
        return int(raw) if raw.isdigit() and 32 <= int(raw) <= 4096 else None

    return _per_model("--resolution", values, pixels, "N or MODEL=N with N from 32 to 4096, e.g. v5-300m=256")


def parse_weights(values: list[str]) -> tuple[str | None, dict[str, str]]:
    """`--weights` values: "random", "example" or a checkpoint file, for all or as MODEL=..."""

    def source(raw: str) -> str | None:
        if raw in ("random", "example"):
            return raw
        path = Path(raw).expanduser()
        return str(path.resolve()) if path.is_file() else None

    return _per_model(
        "--weights", values, source, "random, example or an existing checkpoint file, or MODEL=one of those"
    )


def code_version() -> str:
    """A digest of this package's source: a code change invalidates the cache."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def plan(request: MatrixRequest) -> tuple[list[ModelJob], dict]:
    from .. import __version__
    from ..manifest import library_versions

    formats: list[Format] = resolve_formats(request.formats)
    versions = {k: v for k, v in library_versions().items() if k != "python"}
    code = f"{__version__}+{code_version()}"
    jobs = []
    for spec in resolve_models(request.models):
        resolution = resolution_for(spec, request)
        weights = weights_for(spec, request)
        ordered = sorted(formats, key=lambda f: f.key != BASELINE)  # the baseline first
        cells = tuple(
            CellSpec(
                model=spec.name,
                format=f.key,
                resolution=resolution,
                weights=weights,
                weights_sha256=_file_sha256(weights),
                seed=request.seed,
                images=str(request.images) if request.images else None,
                calibration=str(request.calibration) if request.calibration else None,
            )
            for f in ordered
        )
        keys = tuple(c.cache_key(versions, code) for c in cells)
        earlier = tuple(
            tuple((c.cache_key(versions, old), old) for old in request.accept_code if old != code)
            for c in cells
        )
        jobs.append(
            ModelJob(
                spec.name,
                cells,
                keys,
                str(Path(request.out) / "work"),
                request.bench_runs,
                request.keep_artifacts,
                earlier,
                request.cached_only,
            )
        )
    return jobs, {"versions": versions, "code": code, "formats": [f.key for f in formats]}


def _file_sha256(weights: str) -> str | None:
    from ..fsutil import sha256_file

    return None if weights in ("random", "example") else sha256_file(weights)


def cached(out: Path, cell: CellSpec, key: str) -> dict | None:
    path = cell_path(out, cell)
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    return row if row.get("key") == key else None


def cell_path(out: Path, cell: CellSpec) -> Path:
    return out / "cells" / cell.model / f"{cell.format}.json"


def _from_cache(out: Path, cell: CellSpec, key: str, earlier) -> dict | None:
    """The cached row under this code's key, else under an accepted earlier code's key (the row
    then says which code made it)."""
    row = cached(out, cell, key)
    if row is not None:
        return row
    for old_key, old_code in earlier:
        row = cached(out, cell, old_key)
        if row is not None:
            return {**row, "code": old_code}
    return None


def not_run(cell: CellSpec, key: str) -> dict:
    return {
        **asdict(cell),
        "key": key,
        "status": "not run",
        "lowered": False,
        "reason": "not in the cache (--cached-only)",
    }


def run_model(job: ModelJob, log: Log = lambda _m: None) -> list[dict]:
    """Every cell of one model, each from the cache or run fresh and cached at once."""
    out = Path(job.work).parent
    rows = []
    baseline = None
    for i, (cell, key) in enumerate(zip(job.cells, job.keys)):
        row = _from_cache(out, cell, key, job.earlier[i] if job.earlier else ())
        baseline_kept = cell.format != BASELINE or Path((row or {}).get("baseline_file", "")).is_file()
        if row is not None and (baseline_kept or job.cached_only):
            made_by = f", code {row['code']}" if "code" in row else ""
            log(f"{cell.model} {cell.format}: cached ({row['status']}{made_by})")
        elif job.cached_only:
            row = not_run(cell, key)
            log(f"{cell.model} {cell.format}: not in the cache")
        else:
            log(f"{cell.model} {cell.format}: running ...")
            row = run_cell(
                cell,
                Path(job.work),
                baseline,
                key,
                bench_runs=job.bench_runs,
                keep_artifact=job.keep_artifacts,
            )
            write_text_atomic(cell_path(out, cell), json.dumps(row, indent=1, default=str) + "\n")
            log(f"{cell.model} {cell.format}: {row['status']} in {row['wall_seconds']} s")
        if cell.format == BASELINE and row.get("baseline_file") and Path(row["baseline_file"]).is_file():
            baseline = Path(row["baseline_file"])
        rows.append(row)
    return rows


def run_matrix(request: MatrixRequest, log: Log = lambda _m: None) -> dict:
    """Run (or resume) the matrix; returns the JSON document the tables are made from."""
    from ..bench import cpu_info

    jobs, about = plan(request)
    out = Path(request.out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if request.ray is None:
        rows = [row for job in jobs for row in run_model(job, log)]
        where = "local, one cell at a time"
    else:
        from ..cluster import map_on_ray

        per_job = map_on_ray(
            run_model,
            jobs,
            address=request.ray,
            memory_bytes=[int(j.memory_gb * 2**30) for j in jobs],
            log=log,
        )
        rows = [row for job_rows in per_job for row in job_rows]
        where = f"Ray cluster at {request.ray}"
    doc = {
        "format": "mobile-export.matrix",
        "version": 1,
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": cpu_info(),
        "runner": where,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "cell_seconds": round(sum(r.get("wall_seconds") or 0 for r in rows), 1),
        **about,
        "cells": rows,
    }
    write_text_atomic(out / "matrix.json", json.dumps(doc, indent=1, default=str) + "\n")
    return doc
