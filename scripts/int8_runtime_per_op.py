"""Issue 18: pair every int8 tensor of the runtime with the same tensor of the quantized
PyTorch graph, and measure each op's OWN departure.

1. The convert_pt2e graph gets one extra output per activation quantize node (a fresh
   dequantize of it: an explicit qs8->fp32 convert in the delegate, the other ops unchanged),
   is lowered with the project's `lower` and run in the ExecuTorch runtime: R[t] for every int8
   tensor t (the main output is checked bit-equal to the plain program's).
2. The quantized graph is re-run in PyTorch with every activation dequantize replaced by the
   RUNTIME's value of that tensor: Q'[t] is the reference op applied to exactly the runtime's
   inputs. R[t] vs Q'[t] is op t's own departure (in output steps); R[t] vs Q[t] (the plain
   reference run) is the accumulated one.
3. Rows per op and per op kind (the ops between the int8 inputs and t's quantize).

Usage: int8_runtime_per_op.py v3s|v2 [--recipe-json '{...}'] [--images N] [--out FILE.json]
       [--emulate-bias] [--emulate-mean]  (reference twins: XNNPACK's int32 bias / exact qs8 mean)
       [--dump 6,115]                      (save pre-rounding values of those ops to dump.npz)
Run with PYTHONPATH=$PWD from the repository root."""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections import defaultdict

import int8_runtime_common as C
import numpy as np

QPT = "quantize_per_tensor"
DQPT = "dequantize_per_tensor"


def is_act_q(n) -> bool:
    return (
        n.op == "call_function"
        and QPT in str(n.target)
        and "dequantize" not in str(n.target)
        and getattr(n.args[0], "op", None) in ("call_function", "placeholder")
    )


def short(n) -> str:
    if (
        callable(n.target)
        and not hasattr(n.target, "_schema")
        and getattr(n.target, "__name__", "") == "exact"
    ):
        return "mean[exact]"
    t = str(n.target)
    name = t.split(".")[-2] if t.count(".") >= 2 else t
    return name.replace("aten::", "")


def op_group(q):
    """The compute ops between q's int8 inputs (dequantize nodes) and q, in graph order."""
    seen, stack, group = set(), [q.args[0]], []
    while stack:
        n = stack.pop()
        if n in seen or getattr(n, "op", None) != "call_function":
            continue
        seen.add(n)
        if DQPT in str(n.target) or "dequantize_per_channel" in str(n.target):
            continue
        group.append(n)
        stack.extend(a for a in n.all_input_nodes)
    order = {n: i for i, n in enumerate(q.graph.nodes)}
    return sorted(group, key=order.get)


def module_of(nodes) -> str:
    for n in reversed(nodes):
        stack = n.meta.get("nn_module_stack") or {}
        if stack:
            path = list(stack.values())[-1][0]
            return str(path).replace("model.", "", 1)
    return ""


def kind_of(nodes) -> str:
    names = [short(n) for n in nodes if short(n) not in ("view", "flatten", "reshape", "_guards_fn")]
    return "+".join(names) or "input"


def with_all_outputs(gm):
    """Copy of gm returning (original output, dq(t) for every activation quantize t)."""
    import torch

    g = copy.deepcopy(gm)
    graph = g.graph
    qs = [n for n in graph.nodes if is_act_q(n)]
    out = next(n for n in graph.nodes if n.op == "output")
    extras = []
    for q in qs:
        with graph.inserting_after(q):
            dq = graph.call_function(
                torch.ops.quantized_decomposed.dequantize_per_tensor.default, (q,) + tuple(q.args[1:])
            )
        extras.append(dq)
    orig = out.args[0]
    orig = orig[0] if isinstance(orig, (tuple, list)) else orig
    out.args = (tuple([orig] + extras),)
    graph._codegen = torch.fx.graph.CodeGen()
    g.recompile()
    return g, [q.name for q in qs]


def reference_runs(gm, x, runtime_vals: dict, dump=()):
    """-> (Q: plain reference value of every activation q, as float; Qsub: the same with every
    activation dequantize fed the runtime's value)."""
    import torch

    qnodes = {n.name: n for n in gm.graph.nodes if is_act_q(n)}

    def deq(n, v):
        s, zp = n.args[1], n.args[2]
        return (v.to(torch.float32) - zp) * s

    class Rec(torch.fx.Interpreter):
        def __init__(self, m, sub):
            super().__init__(m, garbage_collect_values=False)
            self.sub, self.vals, self.pre = sub, {}, {}

        def run_node(self, n):
            if (
                self.sub
                and n.op == "call_function"
                and DQPT in str(n.target)
                and getattr(n.args[0], "name", None) in runtime_vals
            ):
                return torch.from_numpy(runtime_vals[n.args[0].name])
            v = super().run_node(n)
            if self.sub and n.name in dump:
                self.pre[n.name] = self.env[n.args[0]].detach().numpy().copy()
                self.pre[n.name + ":in"] = [
                    self.env[a].detach().numpy().copy() for a in n.args[0].all_input_nodes if a in self.env
                ]
            if n.name in qnodes:
                self.vals[n.name] = deq(n, v).numpy().copy()
            return v

    with torch.no_grad():
        a = Rec(gm, False)
        a.run(torch.from_numpy(x))
        b = Rec(gm, True)
        b.run(torch.from_numpy(x))
    return (a.vals, b.vals, b.pre) if dump else (a.vals, b.vals)


class Stat:
    def __init__(self):
        self.sig = self.noise_local = self.noise_acc = 0.0
        self.n = self.diff = 0
        self.max_lsb = 0.0
        self.sum_lsb = 0.0

    def add(self, ref_local, ref_plain, rt, scale):
        d = (rt.astype(np.float64) - ref_local) / scale
        self.n += d.size
        self.diff += int((np.abs(d) > 0.5).sum())
        self.max_lsb = max(self.max_lsb, float(np.abs(d).max()))
        self.sum_lsb += float(d.sum())
        self.sig += float((ref_local.astype(np.float64) ** 2).sum())
        self.noise_local += float(((rt - ref_local).astype(np.float64) ** 2).sum())
        self.noise_acc += float(((rt - ref_plain).astype(np.float64) ** 2).sum())

    def row(self):
        def db(s, n):
            return round(10 * np.log10(s / n), 2) if n > 0 else 999.0

        return {
            "local_sqnr_db": db(self.sig, self.noise_local),
            "acc_sqnr_db": db(self.sig, self.noise_acc),
            "pct_off": round(100.0 * self.diff / max(self.n, 1), 3),
            "max_lsb": round(self.max_lsb, 2),
            "mean_lsb": round(self.sum_lsb / max(self.n, 1), 4),
        }


def _attr(g, target):
    obj = g
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def emulate_bias(gm):
    """Copy of gm whose conv/linear biases are rounded to the int32 grid XNNPACK stores them on
    (ExecuTorch's QuantParams.from_bias: scale = weight scale[c] * input scale, zero point 0,
    quantize_per_channel = round half to even of b * (1 / scale))."""
    import torch

    g = copy.deepcopy(gm)
    n_done = 0
    for n in g.graph.nodes:
        if n.op != "call_function" or short(n) not in ("conv2d", "linear") or len(n.args) < 3:
            continue
        x, w, b = n.args[0], n.args[1], n.args[2]
        if not (
            DQPT in str(getattr(x, "target", ""))
            and "dequantize_per_channel" in str(getattr(w, "target", ""))
        ):
            continue
        if getattr(b, "op", None) != "get_attr":
            continue
        sx = float(x.args[1])
        sw = _attr(g, w.args[1].target)
        bias = _attr(g, b.target)
        scale = sw.to(torch.float32) * sx
        bq = torch.clamp(torch.round(bias * (1.0 / scale)), -(2**31), 2**31 - 1)
        owner, _, leaf = b.target.rpartition(".")
        mod = g.get_submodule(owner) if owner else g
        old = getattr(mod, leaf)
        new = (bq * scale).to(torch.float32)
        if isinstance(old, torch.nn.Parameter):
            new = torch.nn.Parameter(new, requires_grad=False)
        setattr(mod, leaf, new)
        n_done += 1
    g.recompile()
    print(f"emulate_bias: {n_done} biases rounded to XNNPACK's int32 grid")
    return g


def emulate_mean(gm):
    """Copy of gm where every quantized mean / adaptive avg pool (per-tensor dequantize in, per-
    tensor quantize out) computes what XNNPACK's qs8 mean computes: the exact mean of the int8
    values, rounded half to even (the float path breaks exact ties by 1-ulp noise)."""
    import torch

    g = copy.deepcopy(gm)
    count = 0
    for n in list(g.graph.nodes):
        if n.op != "call_function" or short(n) not in ("mean", "adaptive_avg_pool2d"):
            continue
        x = n.args[0]
        users = list(n.users)
        if not (DQPT in str(getattr(x, "target", "")) and len(users) == 1 and is_act_q(users[0])):
            continue
        s_in = float(x.args[1])
        s_out = float(users[0].args[1])
        if short(n) == "mean":
            dims, keep = n.args[1], (n.args[2] if len(n.args) > 2 else False)
            reduce = lambda t, dims=dims, keep=keep: torch.mean(t, dims, keep)  # noqa: E731
        else:
            out_size = n.args[1]
            assert list(out_size) == [1, 1], out_size
            reduce = lambda t: torch.mean(t, (2, 3), True)  # noqa: E731

        def exact(t, s_in=s_in, s_out=s_out, reduce=reduce):
            k = torch.round(t / s_in)  # the int8 value minus its zero point, exactly
            m = reduce(k)  # exact for sums < 2**24; ties land exactly on .5
            return torch.round(m * (s_in / s_out)) * s_out

        with g.graph.inserting_after(n):
            new = g.graph.call_function(exact, (x,))
        n.replace_all_uses_with(new)
        g.graph.erase_node(n)
        count += 1
    g.recompile()
    print(f"emulate_mean: {count} quantized mean(s) computed as XNNPACK does")
    return g


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--recipe-json", default="{}")
    ap.add_argument("--images", type=int, default=C.N_HELD)
    ap.add_argument("--out")
    ap.add_argument("--dump", default="", help="comma-separated op indexes: save pre-rounding values")
    ap.add_argument("--emulate-mean", action="store_true", help="reference with XNNPACK's exact qs8 mean")
    ap.add_argument("--emulate-bias", action="store_true", help="reference with XNNPACK's int32 bias")
    args = ap.parse_args(argv)
    t0 = time.time()

    from mobile_export.quantize import QuantRecipe, quantize_pt2e

    wrapped, calib, held, example = C.setup(args.model)
    held = held[: args.images]
    qm = quantize_pt2e(wrapped, example, calib, QuantRecipe.from_dict(json.loads(args.recipe_json)))
    gm = qm.graph_module
    g_all, qnames = with_all_outputs(gm)
    key = (
        C.WORK / f"prog_{args.model}_{__import__('hashlib').sha1(args.recipe_json.encode()).hexdigest()[:10]}"
    )
    if (key / "all.pte").exists():
        buf_all, buf_plain = (key / "all.pte").read_bytes(), (key / "plain.pte").read_bytes()
    else:
        buf_all, deleg = C.lower_bytes(g_all, example)
        assert not deleg["outside"], deleg["outside"]
        buf_plain, _ = C.lower_bytes(gm, example)
        key.mkdir(parents=True, exist_ok=True)
        (key / "all.pte").write_bytes(buf_all)
        (key / "plain.pte").write_bytes(buf_plain)
    if args.emulate_bias:
        gm = emulate_bias(gm)
    if args.emulate_mean:
        gm = emulate_mean(gm)
    qnodes = {n.name: n for n in gm.graph.nodes if is_act_q(n)}
    groups = {name: op_group(qnodes[name]) for name in qnames}
    stats = {name: Stat() for name in qnames}
    plain = C.run_pte(buf_plain, held)
    fl = C.torch_outputs(wrapped, held)
    q_out = C.torch_outputs(gm, held)
    outs = C.run_pte(buf_all, held)
    same_main = all(np.array_equal(a[0], b[0]) for a, b in zip(outs, plain))
    dump = [qnames[int(i)] for i in args.dump.split(",") if i]
    dumped = defaultdict(list)
    for x, o in zip(held, outs):
        rt = {name: o[i + 1] for i, name in enumerate(qnames)}
        if dump:
            Q, Qsub, pre = reference_runs(gm, x, rt, dump)
            for name in dump:
                dumped[name + ":pre"].append(pre[name])
                dumped[name + ":rt"].append(rt[name])
                dumped[name + ":in0"].append(pre[name + ":in"][0])
        else:
            Q, Qsub = reference_runs(gm, x, rt)
        for name in qnames:
            stats[name].add(Qsub[name], Q[name], rt[name], qnodes[name].args[1])
    rows = []
    for i, name in enumerate(qnames):
        rows.append(
            {
                "i": i,
                "q": name,
                "kind": kind_of(groups[name]),
                "module": module_of(groups[name]),
                "shape": list(qnodes[name].meta["val"].shape) if "val" in qnodes[name].meta else None,
                "scale": qnodes[name].args[1],
                **stats[name].row(),
            }
        )
    by_kind = defaultdict(Stat)
    for name in qnames:
        k = kind_of(groups[name])
        agg = by_kind[k]
        s = stats[name]
        agg.sig += s.sig
        agg.noise_local += s.noise_local
        agg.noise_acc += s.noise_acc
        agg.n += s.n
        agg.diff += s.diff
        agg.max_lsb = max(agg.max_lsb, s.max_lsb)
        agg.sum_lsb += s.sum_lsb
    kinds = {
        k: {"count": sum(1 for n in qnames if kind_of(groups[n]) == k), **v.row()} for k, v in by_kind.items()
    }
    pte = np.concatenate([p[0].reshape(1, -1) for p in plain])
    summary = {
        "model": args.model,
        "recipe": json.loads(args.recipe_json),
        "images": len(held),
        "emulate": [k for k in ("bias", "mean") if getattr(args, "emulate_" + k)],
        "main_output_bit_equal_to_plain_program": same_main,
        **C.three_way(fl, q_out, pte),
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(summary))
    print(f"{'kind':40s} {'n':>3s} {'local dB':>9s} {'%off':>7s} {'maxLSB':>7s} {'meanLSB':>8s}")
    for k, v in sorted(kinds.items(), key=lambda kv: kv[1]["local_sqnr_db"]):
        print(
            f"{k:40s} {v['count']:3d} {v['local_sqnr_db']:9.2f} {v['pct_off']:7.3f} {v['max_lsb']:7.2f} {v['mean_lsb']:8.4f}"
        )
    print("worst 15 ops by local SQNR:")
    for r in sorted(rows, key=lambda r: r["local_sqnr_db"])[:15]:
        print(
            f"  {r['i']:3d} {r['kind']:28s} {r['module']:28s} local {r['local_sqnr_db']:7.2f} acc {r['acc_sqnr_db']:7.2f}"
            f" off {r['pct_off']:6.3f}% max {r['max_lsb']:.2f} mean {r['mean_lsb']:+.4f}"
        )
    if dump:
        np.savez(
            C.WORK / "dump.npz",
            **{k: np.stack(v) for k, v in dumped.items()},
            **{n + ":qargs": np.array([float(qnodes[n].args[1]), float(qnodes[n].args[2])]) for n in dump},
        )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"summary": summary, "kinds": kinds, "ops": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
