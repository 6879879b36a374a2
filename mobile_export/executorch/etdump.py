"""Per-op rows for an fp32 .pte from the real ExecuTorch runtime: the per-op twin of the .pte.

The shipped .pte is one XNNPACK delegate, so the runtime reports one call and cannot say
which op loses precision. The twin is the same reference model lowered AGAIN (the same
`lower`, the same normalization wrapper as export) with XnnpackPartitioner(per_op_mode=True),
one delegate per op, plus an ETRecord. It runs in a child process with ETDump and a debug
buffer (every op's output), one dump per image; the Inspector pairs each runtime output with
the same op of the exported PyTorch graph run on the same image. Same weights and XNNPACK
kernels as the shipped file, but no fusion across op boundaries, so the twin's rows say where
kernel arithmetic departs from PyTorch, not the shipped file's last bits: its whole-program
row stays the last row of the report."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..fsutil import atomic_path, ensure_writable_dir
from ..fxgraph import measured_inputs, module_path, short_op_name
from ..manifest import ArtifactEntry
from ..targets.base import OpInfo, ValueSink
from .runtime import run_isolated

TWIN_IMAGES = 3  # per-op dumps are large and each image is one child-side program load
FP32_EXACT_DB = 150.0  # above float32 rounding (~138 dB): an input this clean counts as exact
KEEP_ENV = "MOBILE_EXPORT_KEEP_TWIN"  # a folder: keep the twin's program, ETRecord and dumps there


def twin_values(
    built,
    entry: dict,
    feed: Sequence[np.ndarray],
    sink: ValueSink,
    log: Callable[[str], None] = lambda _m: None,
) -> list[OpInfo]:
    """Lower the per-op twin into a temp dir (or the folder named by $MOBILE_EXPORT_KEEP_TWIN,
    kept for opening the Inspector by hand), run it with ETDump on `feed` (the images in the
    artifact's input contract), pass every op's values to `sink` and return the ops in graph
    order."""
    from executorch.devtools.etrecord import parse_etrecord

    keep = os.environ.get(KEEP_ENV)
    with (
        contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="mobile-export-twin-")
    ) as tmp:
        work = ensure_writable_dir(tmp)
        program, etrecord = lower_twin(built, entry, work, log)
        dumps = work / "etdump"
        record = parse_etrecord(str(etrecord))
        run_isolated(program, feed, etdump_dir=dumps, debug_buffer_bytes=debug_buffer_bytes(record))
        if keep:
            log(f"per-op twin kept in {work}: twin.pte, twin.etrecord, etdump/etdump_N.etdp + debug_N.bin")
        return numeric_gap_values(record, dumps, feed, sink, in_wrapper=_normalized_in_model(entry))


def lower_twin(built, entry: dict, workdir: Path, log) -> tuple[Path, Path]:
    """The reference model as export lowered it, but one XNNPACK delegate per op; returns the
    twin .pte and its ETRecord."""
    import torch

    from .lowering import TANH_GELU_FAST, lower, with_normalization

    pre = built.preprocess
    model = (
        with_normalization(built.module, pre.mean, pre.std) if _normalized_in_model(entry) else built.module
    )
    model.eval()
    fast_gelu = ((ArtifactEntry.from_dict(entry).delegation or {}).get("tanh_gelu") or {}).get(
        "runs_as"
    ) == TANH_GELU_FAST
    with _buffers_persistent(model):
        manager, _ = lower(
            model,
            torch.zeros(built.input_shape, dtype=torch.float32),
            lambda m: log(f"per-op twin: {m}"),
            per_op=True,
            etrecord=True,
            exact_tanh_gelu=not fast_gelu,
        )
    program, etrecord = workdir / "twin.pte", workdir / "twin.etrecord"
    with atomic_path(program) as tmp:
        tmp.write_bytes(manager.buffer)
    with atomic_path(etrecord) as tmp:
        manager.get_etrecord().save(str(tmp))
    return program, etrecord


@contextlib.contextmanager
def _buffers_persistent(model):
    """Non-persistent buffers (V5 RMSNorm's constant 1/C kernel) become program constants that
    the saved ETRecord drops, and the Inspector then fails to rebuild its reference graph
    (KeyError on the buffer's name). For the twin only, register them as persistent, then
    restore the model as it was."""
    state = set(model.state_dict())
    changed = []
    for name, buf in list(model.named_buffers()):
        if name not in state:
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            owner.register_buffer(attr, buf, persistent=True)
            changed.append((owner, attr, buf))
    try:
        yield
    finally:
        for owner, attr, buf in changed:
            owner.register_buffer(attr, buf, persistent=False)


def debug_buffer_bytes(record) -> int:
    """Room for every op output of one run: the tensor sizes the ETRecord's edge graph
    records, doubled (alignment, layout copies), plus slack."""
    total = 0
    for node in record.edge_dialect_program.graph.nodes:
        vals = node.meta.get("val")
        for v in vals if isinstance(vals, (list, tuple)) else [vals]:
            if hasattr(v, "numel") and hasattr(v, "element_size"):
                total += int(v.numel()) * int(v.element_size())
    return 2 * total + (16 << 20)


def numeric_gap_values(
    etrecord, dump_dir: Path, feed: Sequence[np.ndarray], sink: ValueSink, in_wrapper: bool = False
) -> list[OpInfo]:
    """Inspector.calculate_numeric_gap per image (image i: dump_dir/etdump_i.etdp + debug_i.bin):
    the values of each AOT op (or fused group of ops) go to `sink`, one call per image; returns
    the ops in graph order. `etrecord`: a path or a parsed ETRecord (a test may alter its
    reference weights). `in_wrapper`: module paths carry the normalization wrapper's "model."
    prefix, dropped so they match the model's own names."""
    from executorch.devtools import Inspector
    from executorch.devtools.etrecord import ETRecord, parse_etrecord

    from ..quantize.calibration import to_tensor

    record = etrecord if isinstance(etrecord, ETRecord) else parse_etrecord(str(etrecord))
    names: dict[tuple, list[str]] = {}
    for i, x in enumerate(feed):
        record.update_representative_inputs([(to_tensor(x),)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inspector = Inspector(
                etdump_path=str(dump_dir / f"etdump_{i}.etdp"),
                etrecord=record,
                debug_buffer_path=str(dump_dir / f"debug_{i}.bin"),
            )
            gap = inspector.calculate_numeric_gap("L1")
        if gap.empty:
            continue
        for handle, ops, aot, runtime in zip(
            gap["aot_debug_handle"],
            gap["aot_ops"],
            gap["aot_intermediate_output"],
            gap["runtime_intermediate_output"],
        ):
            aot, runtime = _tensor(aot), _tensor(runtime)
            if aot is None or runtime is None or aot.size != runtime.size:
                continue
            key = tuple(handle)
            names.setdefault(key, list(ops))
            sink("+".join(names[key]), aot, runtime.reshape(aot.shape))
    if not names:
        raise ValueError("the Inspector matched no runtime output to an op of the exported graph")
    return _ops(_reference_nodes(record), names, in_wrapper)


def _tensor(value) -> np.ndarray | None:
    """Inspector values are tensors, or one-element lists of them."""
    import torch

    if isinstance(value, (list, tuple)):
        value = value[0] if len(value) == 1 else None
    return value.detach().float().numpy() if isinstance(value, torch.Tensor) else None


def _reference_nodes(record) -> list:
    """Nodes of the graph the Inspector compared against: the ATen exported program, or the
    edge program it falls back to when debug handles do not map back (names rarely clash)."""
    nodes, seen = [], set()
    for program in (record.exported_program, record.edge_dialect_program):
        for node in program.graph.nodes if program is not None and hasattr(program, "graph") else ():
            if node.name not in seen:
                seen.add(node.name)
                nodes.append(node)
    return nodes


def _ops(graph_nodes: list, names: dict, in_wrapper: bool) -> list[OpInfo]:
    """Ops in graph order; each is fed by the measured ops reached from its inputs through
    unmeasured nodes (none for the graph input: exact), losses capped at FP32_EXACT_DB."""
    order = {n.name: i for i, n in enumerate(graph_nodes)}
    nodes = {n.name: n for n in graph_nodes}
    groups = {
        key: [
            nodes[name] for name in sorted(names[key], key=lambda n: order.get(n, math.inf)) if name in nodes
        ]
        for key in names
    }
    group_of = {node.name: "+".join(names[key]) for key, members in groups.items() for node in members}
    ops = []
    for key, members in sorted(
        groups.items(), key=lambda kv: order.get(kv[1][0].name, math.inf) if kv[1] else math.inf
    ):
        seen = {m.name for m in members}
        feeds: dict[str, None] = {}
        for m in members:
            measured_inputs(m, group_of, seen, feeds)
        first = members[0] if members else None
        ops.append(
            OpInfo(
                name="+".join(names[key]),
                op="+".join(short_op_name(m) for m in members) or "?",
                module=_module(first, in_wrapper) if first is not None else "",
                feeds=tuple(feeds),
            )
        )
    return ops


def _module(node, in_wrapper: bool) -> str:
    path = module_path(node)
    if in_wrapper:
        path = (
            path[len("model.") :]
            if path.startswith("model.")
            else ("(input normalization)" if path in ("", "model") else path)
        )
    return path


def _normalized_in_model(entry: dict) -> bool:
    return ArtifactEntry.from_dict(entry).normalized_in_model
