"""`matrix --ray` on a REAL two-node Ray cluster on 127.0.0.1 (the same cluster fixture as
`eval --ray`): a 4-cell slice gives the same cells as the local run, timing fields aside.
Slow (8 exports); skipped without ray."""

from __future__ import annotations

import pytest
from test_eval_ray import cluster  # noqa: F401  (the fixture: a head and a second node)

from mobile_export.matrix import MatrixRequest, run_matrix

TIMING = {
    "wall_seconds",
    "peak_rss_mb",
    "latency_ms",
    "baseline_ms",
    "latency_ratio",
    "export_seconds",
    "baseline_file",
}
SLICE = dict(models=["v1-025", "v2-035"], formats=["et-fp32", "coreml-fp16"], resolution=32, bench_runs=2)


@pytest.mark.slow
def test_ray_slice_equals_the_local_run(cluster, tmp_path):  # noqa: F811
    local = run_matrix(MatrixRequest(out=tmp_path / "local", **SLICE))
    on_ray = run_matrix(MatrixRequest(out=tmp_path / "ray", ray=cluster, **SLICE))
    assert on_ray["runner"].startswith("Ray cluster")
    assert len(local["cells"]) == len(on_ray["cells"]) == 4

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

    assert strip(on_ray["cells"]) == strip(local["cells"])
    assert all(r["lowered"] for r in on_ray["cells"])
    # The rows came back to the driver and are cached there: a rerun sends nothing.
    again = run_matrix(MatrixRequest(out=tmp_path / "ray", ray=cluster, **SLICE))
    assert again["cells"] == on_ray["cells"]
