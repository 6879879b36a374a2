"""`eval --ray` on a REAL two-node Ray cluster on 127.0.0.1 (started and stopped here):
the same per-image predictions as the in-process run, and a worker killed mid-run is
restarted and its units retried without losing or duplicating images. Skipped without ray."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import eval_helpers as h
import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # two Ray nodes, three exports and a killed worker: minutes

ROOT = Path(__file__).resolve().parents[1]
EVERY = 9  # 539 held-out scans -> 60 images


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli(*args, env):
    exe = Path(sys.executable).with_name("ray")
    cmd = [str(exe) if exe.exists() else "ray", *args]
    return subprocess.run(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300, text=True
    )


def _our_ray_processes(temp: Path) -> list[int]:
    """PIDs of the processes of OUR cluster: each of them names its session folder (under our
    own --temp-dir) on its command line. `ray stop` would end every Ray cluster of the machine,
    other people's included, so the fixture ends only these, by id."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(temp) in cmdline:
            pids.append(int(proc.name))
    return pids


def _stop(temp: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _our_ray_processes(temp):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 15
        while _our_ray_processes(temp) and time.time() < deadline:
            time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a second node, one CPU each, loopback only; stopped also on failure."""
    port = _free_port()
    # Ray puts AF_UNIX sockets under --temp-dir (at most 107 bytes of path): a short folder of
    # our own, not pytest's (under xdist it gains a popen-gwN level and overflows)
    temp = Path(tempfile.mkdtemp(prefix="mxray-", dir="/tmp"))
    # loopback only; token auth off for head, node and driver alike (ray 2.60 turns it on when
    # ~/.ray/auth_token exists, and a node without the token cannot join)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    address = f"127.0.0.1:{port}"
    try:
        head = _ray_cli(
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
            env=env,
        )
        assert head.returncode == 0, head.stdout[-2000:]
        node = _ray_cli(
            "start",
            f"--address={address}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
            env=env,
        )
        assert node.returncode == 0, node.stdout[-2000:]
        assert len(_our_ray_processes(temp)) >= 4  # gcs, 2 raylets, ...: what _stop will end
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _stop(temp)
        assert not _our_ray_processes(temp)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    pytest.importorskip("executorch")
    pytest.importorskip("sklearn")
    work = tmp_path_factory.mktemp("eval_ray")
    artifacts = h.export_artifacts(h.DIGITS, work, targets=("fp32", "fp16"))
    classes, x, y, _ = h.held_out(h.DIGITS)
    return {"artifacts": artifacts, "folder": h.write_imagefolder(work / "folder", classes, x, y)}


def _comparable(outcome) -> dict:
    from mobile_export.eval import build_report

    doc = build_report(outcome)
    for key in ("seconds", "executor"):
        doc.pop(key)
    for r in doc["rows"]:
        r.pop("evaluated_now")
    return doc


def test_ray_equals_in_process_and_survives_a_killed_worker(cluster, digits, tmp_path):
    from mobile_export.cluster import RayExecutor
    from mobile_export.eval import EvalOptions, run_eval

    arts = [digits["artifacts"]["fp32"], digits["artifacts"]["fp16"]]
    local = run_eval(
        arts, EvalOptions(dataset=digits["folder"], every=EVERY, cache_dir=tmp_path / "local", batch=20)
    )
    n = len(local.dataset.items)
    assert n == 60

    os.environ["RAY_ADDRESS"] = cluster
    executor = RayExecutor(cluster, workers=2)
    merged: list[int] = []
    killed: list[int] = []

    def kill_one_worker_once(unit, result):
        merged.extend(unit.indices)
        if not killed:  # units are still in flight on both actors: kill one actor's process
            pid = ray.get(executor.actors[0].pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    try:
        remote = run_eval(
            arts,
            EvalOptions(dataset=digits["folder"], every=EVERY, cache_dir=tmp_path / "ray", batch=10),
            executor=executor,
            on_unit=kill_one_worker_once,
        )
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        ray.shutdown()
    assert killed, "the hook never ran"
    assert sorted(merged) == list(range(n))  # every image merged exactly once
    assert remote.executor["executor"] == "ray" and remote.executor["workers"] == 2
    assert set(remote.computed.values()) == {n}
    for key, top5 in local.top5.items():  # the same per-image predictions, top-5 order included
        np.testing.assert_array_equal(remote.top5[key], top5)
    assert _comparable(remote) == _comparable(local)
