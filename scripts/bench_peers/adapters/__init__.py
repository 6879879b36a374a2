"""One adapter per runtime: how it is prepared (export/convert) and how a worker calls it.
Every adapter's make_call(precision, artifact, alias, threads, x_np, keep_alive) returns
(call, load milliseconds)."""

from __future__ import annotations

from . import executorch, litert, onnxruntime, torch_eager


def make_call(kind: str, precision: str, artifact: str, alias: str, threads: int, x_np, keep_alive: list):
    if kind in ("eager", "compile"):
        return torch_eager.make_call(kind, precision, artifact, alias, threads, x_np, keep_alive)
    adapters = {"executorch": executorch, "onnxruntime": onnxruntime, "litert": litert}
    if kind not in adapters:
        raise ValueError(kind)
    return adapters[kind].make_call(precision, artifact, alias, threads, x_np, keep_alive)
