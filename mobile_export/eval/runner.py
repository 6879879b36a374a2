"""Evaluate artifacts of one model on a labelled image set, streaming, resumable.

Images are read in fixed order in batches; each image is decoded once with the manifest's
preprocessing (preprocess.load_input, the function verify uses) and fed to every row: the
PyTorch reference rebuilt from the manifest, each .pte (one ExecuTorch child process per
batch, as verify isolates it) and each .mlpackage (our ML Program executor, loaded once).
Only the top-5 class indices per (row, image) are kept, in arrays of N entries, so memory
does not grow with pixels.

Every answer goes to a per-image cache (sqlite, committed per batch) keyed by the row
(artifact sha256 or reference weights digest, plus the preprocessing contract) and the image
(absolute path, mtime, size): after Ctrl-C the same command evaluates only what is missing,
and a changed artifact or image is evaluated afresh.

Work is handed to an executor: `LocalExecutor` (this process) by default; `cluster.RayExecutor`
shards the same work units over a Ray cluster. Both yield the same per-image results."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .. import manifest as mf
from ..errors import ArtifactError, ImageError, ManifestError, UsageError
from ..models.registry import Preprocess
from ..preprocess import load_input, normalize
from . import datasets

TOPK = 5
# Images per work unit (one ExecuTorch child process per .pte per unit: its start-up, 2 s idle
# and 30 s on a loaded machine, is paid once per unit), within ~64 MB of float32 inputs.
INPUT_BUDGET_BYTES = 64 << 20
MAX_BATCH = 256
CACHE_FILE = "eval-cache.sqlite"
REFERENCE = "reference"


@dataclass(frozen=True)
class EvalOptions:
    dataset: Path
    limit: int | None = None
    every: int = 1
    batch: int | None = None  # images per work unit; default from the input size (default_batch)
    report_dir: Path | None = None
    cache_dir: Path | None = None  # default: report_dir, else ~/.cache/mobile-export/eval
    weights: str | None = None  # reference weights override, as verify's --weights

    def __post_init__(self):
        if self.every < 1:
            raise UsageError(f"--every must be at least 1, got {self.every}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1, got {self.limit}")
        if self.batch is not None and self.batch < 1:
            raise UsageError(f"batch must be at least 1, got {self.batch}")


@dataclass(frozen=True)
class Row:
    key: str  # cache identity: what was run on which input contract
    name: str  # what reports print
    kind: str  # "reference" | "executorch" | "coreml"
    path: str | None = None
    entry: dict | None = None
    sha256: str | None = None

    @property
    def takes_raw(self) -> bool:
        """The artifact normalizes inside (RGB in [0, 1]); the reference takes normalized input."""
        return bool(self.entry and self.entry["input"].get("normalized_in_model"))


@dataclass
class Plan:
    manifest: dict
    preprocess: Preprocess
    rows: list[Row]  # rows[0] is the reference
    manifest_dir: Path | None = None

    @property
    def labels(self) -> list[str] | None:
        return _labels_of(self.manifest, self.manifest_dir)


@dataclass
class WorkUnit:
    """Images of one batch and, per image, the rows whose answer is not cached."""

    indices: list[int]
    paths: list[str]
    rows: list[list[str]]
    payload: list[bytes] | None = None  # file bytes, for workers that cannot see our disk


@dataclass
class UnitResult:
    top5: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0


# --- plan --------------------------------------------------------------------------------


def default_batch(crop: int) -> int:
    return max(8, min(MAX_BATCH, INPUT_BUDGET_BYTES // (2 * 4 * 3 * crop * crop)))


def _labels_of(manifest: dict, directory: Path | None) -> list[str] | None:
    record = manifest.get("labels")
    if not record or directory is None:
        return None
    path = directory / record["file"]
    if not path.is_file():
        raise ManifestError(f"{path} (the labels the manifest lists) is missing; export again")
    return path.read_text(encoding="utf-8").splitlines()[: int(record.get("count") or 10**9)]


def _model_identity(manifest: dict) -> dict:
    model = manifest["model"]
    return {
        "name": model["name"],
        "num_classes": model["num_classes"],
        "resolution": model["resolution"],
        "weights": (model.get("weights") or {}).get("sha256"),
        "preprocess": manifest["preprocess"],
    }


def contract_digest(pre: Preprocess, takes_raw: bool) -> str:
    doc = {
        "preprocess": pre.to_dict(),
        "normalized_in_model": takes_raw,
        "topk": TOPK,
        "decoder": "preprocess.load_input/1",
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def make_plan(artifacts: list[str | Path]) -> Plan:
    """Check every artifact (exists, type, manifest, sha256) and that all are one model."""
    from ..targets import target_for_artifact
    from ..verify.reference import preprocess_of

    if not artifacts:
        raise UsageError("no ARTIFACT given; pass one or more .pte/.mlpackage files")
    rows: list[Row] = []
    first: tuple[Path, dict] | None = None
    for a in artifacts:
        path = Path(a)
        target = target_for_artifact(path)
        if not path.exists():
            raise ArtifactError(f"{path} does not exist; check the path or export again")
        target.check_file(path)
        manifest, entry = mf.manifest_for(path)
        mf.check_sha256(path, entry)
        if entry["output"].get("kind") == "features" or manifest["model"].get("output") == "features":
            raise UsageError(f"{path.name} outputs features, not classes; eval needs a classifier")
        if first is None:
            first = (path, manifest)
        elif _model_identity(manifest) != _model_identity(first[1]):
            ours, theirs = _model_identity(manifest), _model_identity(first[1])
            differ = ", ".join(k for k in ours if ours[k] != theirs[k])
            same_name = path.name == first[0].name
            raise UsageError(
                f"{path if same_name else path.name} is not the same model as "
                f"{first[0] if same_name else first[0].name} "
                f"({manifest['model']['name']} vs {first[1]['model']['name']}; differs in: {differ}); "
                "evaluate one model per call"
            )
        if any(r.path and Path(r.path).resolve() == path.resolve() for r in rows):
            raise UsageError(f"{path.name} is given twice")
        pre = preprocess_of(manifest)
        takes_raw = bool(entry["input"].get("normalized_in_model"))
        key = hashlib.sha256(f"{entry['sha256']}|{contract_digest(pre, takes_raw)}".encode()).hexdigest()
        kind = "coreml" if path.suffix.lower() == ".mlpackage" else "executorch"
        rows.append(Row(key, path.name, kind, str(path.resolve()), entry, entry["sha256"]))
    assert first is not None
    manifest = first[1]
    pre = preprocess_of(manifest)
    weights_id = json.dumps(
        {"model": _model_identity(manifest), "weights": manifest["model"].get("weights")}, sort_keys=True
    )
    ref_key = hashlib.sha256(f"pytorch|{weights_id}|{contract_digest(pre, False)}".encode()).hexdigest()
    reference = Row(ref_key, f"PyTorch {manifest['model']['name']} (reference)", REFERENCE)
    return Plan(manifest, pre, [reference, *rows], manifest_dir=first[0].resolve().parent)


# --- evaluating one work unit -------------------------------------------------------------


class Evaluator:
    """Runs the rows of a plan on work units. Loads each artifact once (a .pte is opened
    by one child process per unit). `paths` maps row keys to local copies of the artifacts."""

    def __init__(self, plan: Plan, reference_module, paths: dict[str, str] | None = None, threads: int = 1):
        from ..manifest import ArtifactEntry
        from ..targets import get_target

        self.plan = plan
        self.reference = reference_module
        self.threads = threads
        self._runners: dict[str, Callable[[list[np.ndarray]], list[np.ndarray]]] = {}
        for row in plan.rows[1:]:
            path = Path((paths or {}).get(row.key, row.path))
            # the entry names its target (a .pte may be XNNPACK or the Core ML delegate); workers
            # need no manifest on their disk
            target = get_target(
                ArtifactEntry.from_dict(row.entry).target
                or ("coreml" if row.kind == "coreml" else "executorch")
            )
            self._runners[row.key] = target.open_runner(path, row.entry, threads=threads)

    def evaluate(self, unit: WorkUnit) -> UnitResult:
        t0 = time.perf_counter()
        result = UnitResult()
        raw: dict[int, np.ndarray] = {}
        with tempfile.TemporaryDirectory(prefix="mobile-export-eval-") as tmp:
            for i, (index, path) in enumerate(zip(unit.indices, unit.paths)):
                source = path
                if unit.payload is not None:  # the bytes of the file, under its own suffix
                    source = os.path.join(tmp, f"{i}{Path(path).suffix}")
                    Path(source).write_bytes(unit.payload[i])
                try:
                    raw[index] = load_input(source, self.plan.preprocess, normalized=False)
                except ImageError as exc:
                    result.skipped[index] = str(exc).replace(Path(source).name, Path(path).name)
        wanted = {index: set(rows) for index, rows in zip(unit.indices, unit.rows) if index in raw}
        for row in self.plan.rows:
            todo = [index for index in wanted if row.key in wanted[index]]
            if not todo:
                continue
            if row.kind == REFERENCE or not row.takes_raw:
                inputs = [normalize(raw[i][0], self.plan.preprocess)[None].copy() for i in todo]
            else:
                inputs = [raw[i] for i in todo]
            outputs = self._run_reference(inputs) if row.kind == REFERENCE else self._runners[row.key](inputs)
            for index, out in zip(todo, outputs):
                result.top5.setdefault(index, {})[row.key] = top_k(np.asarray(out).reshape(-1))
        result.seconds = time.perf_counter() - t0
        return result

    def _run_reference(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """On `threads` threads: on a shared machine PyTorch's default (one per core) spins
        and ran 100x slower here."""
        import torch

        from ..verify.reference import run_module

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return list(run_module(self.reference, inputs))
        finally:
            torch.set_num_threads(before)


def top_k(scores: np.ndarray, k: int = TOPK) -> list[int]:
    """Class indices by decreasing score; ties keep the lower index first (as argmax does)."""
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]


class LocalExecutor:
    """Work units one after the other in this process."""

    def __init__(self, threads: int = 1):
        self.threads = threads

    def map(
        self, plan: Plan, reference_module, units: Iterable[WorkUnit]
    ) -> Iterator[tuple[WorkUnit, UnitResult]]:
        evaluator = Evaluator(plan, reference_module, threads=self.threads)
        for unit in units:
            yield unit, evaluator.evaluate(unit)

    def describe(self) -> dict:
        return {"executor": "in-process", "workers": 1}


# --- cache ---------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mobile-export" / "eval"


class ResultCache:
    """(row key, image key) -> top-5, in sqlite; one transaction per work unit."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / CACHE_FILE
        try:
            self.db = sqlite3.connect(str(self.path))
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS results (row TEXT, image TEXT, top5 TEXT, PRIMARY KEY (row, image))"
            )
            self.db.commit()
        except sqlite3.DatabaseError as exc:
            raise ImageError(
                f"the eval cache {self.path} is unreadable ({exc}); delete it to start afresh"
            ) from None

    def get(self, row: str, image: str) -> list[int] | None:
        hit = self.db.execute("SELECT top5 FROM results WHERE row = ? AND image = ?", (row, image)).fetchone()
        return json.loads(hit[0]) if hit else None

    def put_many(self, rows: list[tuple[str, str, list[int]]]) -> None:
        with self.db:  # one commit: a unit is cached whole or not at all
            self.db.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?)", [(r, i, json.dumps(t)) for r, i, t in rows]
            )

    def close(self) -> None:
        self.db.close()


def image_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_mtime_ns}|{st.st_size}"


# --- the run --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a run produced: top-5 per row and image (-1 where skipped), and how it went."""

    plan: Plan
    dataset: datasets.Dataset
    top5: dict[str, np.ndarray]  # row key -> N x TOPK int32
    skipped: dict[int, str]
    computed: dict[str, int]  # row key -> images evaluated in this run (not from the cache)
    seconds: float
    executor: dict


def run_eval(
    artifacts: list[str | Path],
    options: EvalOptions,
    executor=None,
    progress: Callable[[int], object] | None = None,
    on_unit: Callable[[WorkUnit, UnitResult], None] | None = None,
) -> Outcome:
    """Evaluate every artifact and the reference on the dataset. `progress(total)` returns
    an object with update(n) and close() (the CLI passes a tqdm bar); `on_unit` is called
    after each unit is cached (tests interrupt there)."""
    from ..verify.reference import rebuild_reference

    t0 = time.perf_counter()
    plan = make_plan(artifacts)
    model = plan.manifest["model"]
    data = datasets.load_dataset(
        options.dataset, plan.labels, int(model["num_classes"]), options.every, options.limit
    )
    built = rebuild_reference(plan.manifest, options.weights)
    executor = executor or LocalExecutor()
    n = len(data.items)
    top5 = {row.key: np.full((n, TOPK), -1, np.int32) for row in plan.rows}
    computed = {row.key: 0 for row in plan.rows}
    skipped: dict[int, str] = {}
    cache = ResultCache(Path(options.cache_dir or options.report_dir or default_cache_dir()))
    bar = progress(n) if progress else None
    keys: dict[int, str] = {}
    batch = options.batch or default_batch(plan.preprocess.crop)

    def units() -> Iterator[WorkUnit]:
        for start in range(0, n, batch):
            unit = WorkUnit([], [], [])
            for index in range(start, min(n, start + batch)):
                item = data.items[index]
                try:
                    keys[index] = image_key(item.path)
                except OSError as exc:
                    skipped[index] = f"{item.name}: cannot read ({exc.strerror})"
                    continue
                missing = []
                for row in plan.rows:
                    hit = cache.get(row.key, keys[index])
                    if hit is None:
                        missing.append(row.key)
                    else:
                        top5[row.key][index, : len(hit)] = hit
                if missing:
                    unit.indices.append(index)
                    unit.paths.append(str(item.path))
                    unit.rows.append(missing)
            done = min(n, start + batch) - start - len(unit.indices)
            if bar is not None and done:
                bar.update(done)
            if unit.indices:
                yield unit

    try:
        for unit, result in executor.map(plan, built.module, units()):
            fresh = []
            for index, rows in result.top5.items():
                for key, classes in rows.items():
                    top5[key][index, : len(classes)] = classes
                    computed[key] += 1
                    fresh.append((key, keys[index], classes))
            cache.put_many(fresh)
            skipped.update(result.skipped)
            if bar is not None:
                bar.update(len(unit.indices))
            if on_unit is not None:
                on_unit(unit, result)
    finally:
        cache.close()
        if bar is not None:
            bar.close()
    if len(skipped) == n:
        raise ImageError(
            f"none of the {n} images in {str(options.dataset)!r} could be read; "
            f"e.g. {next(iter(skipped.values()))}"
        )
    return Outcome(plan, data, top5, skipped, computed, time.perf_counter() - t0, executor.describe())


def labels_array(data: datasets.Dataset) -> np.ndarray:
    return np.array([it.label for it in data.items], np.int64)
