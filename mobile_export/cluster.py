"""Ray for `eval --ray` and `matrix --ray`: the same work units as the in-process run, on a cluster.

The only module that imports ray (an optional extra: pip install "mobile-export[cluster]").
- Data movement is Ray's: each artifact's bytes (a .mlpackage as a tar) and the reference
  PyTorch module go into the object store once; each work unit carries its images' file
  bytes, so workers need not see the driver's disk.
- One actor per worker slot (num_cpus=1) materializes every artifact once, checks its sha256
  and keeps an Evaluator (the in-process code) for the whole run.
- Scheduling and retries are Ray's: ActorPool hands units to idle actors; an actor that dies
  is restarted (max_restarts) and its unfinished calls re-run (max_task_retries). A unit's
  result is a pure function of its images, so a retry returns the same answers, and the driver
  merges each unit once (the pool returns one result per submitted unit).
At most `in_flight` units per actor are outstanding, so the driver's memory stays flat.
`matrix --ray` uses map_on_ray: one plain task per model, with the memory it declares."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import ArtifactError, MobileExportError, UsageError, first_line
from .eval.runner import Evaluator, Plan, UnitResult, WorkUnit

MAX_RESTARTS = 4
MAX_TASK_RETRIES = 4
IN_FLIGHT_PER_WORKER = 2


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'mobile-export[cluster]' (ray==2.60.0)") from None
    return ray


def pack(path: str | Path) -> bytes:
    """A file's bytes, or a directory (.mlpackage) as an uncompressed tar."""
    p = Path(path)
    if p.is_file():
        return p.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(p), arcname=p.name)
    return buf.getvalue()


def unpack(data: bytes, name: str, into: Path) -> Path:
    dest = into / name
    if name.lower().endswith(".mlpackage"):
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            tar.extractall(into, filter="data")
    else:
        dest.write_bytes(data)
    return dest


def connect(address: str | None):
    """ray, initialized against `address` ("auto", host:port, or None for a new local cluster)."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                logging_level="ERROR",
                log_to_driver=False,
                configure_logging=True,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = address or os.environ.get("RAY_ADDRESS") or "a new local cluster"
            raise MobileExportError(
                f"cannot start or reach Ray at {where} ({first_line(exc)}); check the address (ray status) or drop --ray"
            ) from None
    return ray


def map_on_ray(
    fn,
    jobs: list,
    address: str | None = None,
    memory_bytes: list[int | None] | None = None,
    log=lambda _m: None,
    max_retries: int = MAX_TASK_RETRIES,
) -> list:
    """fn(job) for every job as one Ray task each (one CPU and the memory the job declares, so
    Ray places a big job only where it fits); results in job order. Ray re-runs a task whose
    worker died (max_retries); a job whose memory no node has is refused before anything runs."""
    ray = connect(address)
    memory_bytes = memory_bytes or [None] * len(jobs)
    largest = max((n.get("Resources", {}).get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    too_big = [(job, m) for job, m in zip(jobs, memory_bytes) if m and largest and m > largest]
    if too_big:
        job, m = too_big[0]
        raise UsageError(
            f"{getattr(job, 'model', job)} needs {m / 2**30:.1f} GiB but the largest Ray node offers "
            f"{largest / 2**30:.1f} GiB; add a bigger node or leave that model out"
        )
    remote = ray.remote(num_cpus=1, max_retries=max_retries)(fn)
    refs = [
        remote.options(memory=m).remote(job) if m else remote.remote(job)
        for job, m in zip(jobs, memory_bytes)
    ]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        i = index[done[0]]
        try:
            results[i] = ray.get(done[0])
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, MobileExportError):
                raise cause from None
            raise MobileExportError(f"a Ray task failed: {first_line(cause or exc)}") from None
        log(f"{getattr(jobs[i], 'model', i)}: done on Ray ({len(refs) - len(pending)}/{len(refs)})")
    return results


class EvalWorker:
    """The actor: artifacts materialized once, one Evaluator, many units."""

    def __init__(self, plan: Plan, reference_module, blobs: dict):
        import ray

        from .fsutil import sha256_file

        self._dir = tempfile.mkdtemp(prefix="mobile-export-eval-worker-")
        paths = {}
        for row in plan.rows[1:]:
            local = unpack(ray.get(blobs[row.key]), Path(row.path).name, Path(self._dir))
            if sha256_file(local) != row.sha256:
                raise ArtifactError(f"{local.name}: the copy on this worker does not match its sha256")
            paths[row.key] = str(local)
        self._evaluator = Evaluator(plan, reference_module, paths=paths)

    def evaluate(self, unit: WorkUnit) -> tuple[WorkUnit, UnitResult]:
        result = self._evaluator.evaluate(unit)
        unit.payload = None  # do not send the images back
        return unit, result

    def pid(self) -> int:
        return os.getpid()


class RayExecutor:
    """An executor for runner.run_eval: `map(plan, reference_module, units)` yields
    (unit, result) as units finish, in any order."""

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        in_flight: int = IN_FLIGHT_PER_WORKER,
        max_restarts: int = MAX_RESTARTS,
        max_task_retries: int = MAX_TASK_RETRIES,
    ):
        _ray()  # fail fast, before any image is read
        if workers is not None and workers < 1:
            raise UsageError(f"workers must be at least 1, got {workers}")
        self.address = address
        self.workers = workers
        self.in_flight = max(1, in_flight)
        self.max_restarts = max_restarts
        self.max_task_retries = max_task_retries
        self.actors: list = []  # the live actor handles during map (tests kill one)
        self._started = 0

    def map(
        self, plan: Plan, reference_module, units: Iterable[WorkUnit]
    ) -> Iterator[tuple[WorkUnit, UnitResult]]:
        ray = connect(self.address)
        from ray.util import ActorPool

        blobs = {row.key: ray.put(pack(row.path)) for row in plan.rows[1:]}
        module = ray.put(reference_module)
        count = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        # max_concurrency 2: pid() answers while a unit runs (the pool gives an actor one unit at a time)
        worker = ray.remote(
            num_cpus=1,
            max_restarts=self.max_restarts,
            max_task_retries=self.max_task_retries,
            max_concurrency=2,
        )(EvalWorker)
        self.actors = [worker.remote(plan, module, blobs) for _ in range(count)]
        self._started = count
        pool = ActorPool(self.actors)
        outstanding = 0
        try:
            for unit in units:
                unit.payload = [Path(p).read_bytes() for p in unit.paths]
                pool.submit(lambda actor, u: actor.evaluate.remote(u), unit)
                outstanding += 1
                unit = None
                while outstanding >= count * self.in_flight:
                    yield self._next(pool)
                    outstanding -= 1
            while outstanding:
                yield self._next(pool)
                outstanding -= 1
        finally:
            for actor in self.actors:
                ray.kill(actor)
            self.actors = []

    @staticmethod
    def _next(pool) -> tuple[WorkUnit, UnitResult]:
        import ray

        try:
            return pool.get_next_unordered()
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, MobileExportError):
                raise cause from None
            raise MobileExportError(f"a Ray worker failed: {first_line(cause or exc)}") from None
        except ray.exceptions.RayActorError as exc:
            raise MobileExportError(
                f"a Ray worker died and could not be restarted ({first_line(exc)}); "
                "check the cluster (ray status)"
            ) from None

    def describe(self) -> dict:
        return {
            "executor": "ray",
            "workers": self._started,
            "address": self.address or os.environ.get("RAY_ADDRESS"),
        }
