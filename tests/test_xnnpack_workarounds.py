"""Where ExecuTorch 1.5.1 departs from PyTorch on V5's ops, and the workarounds, each checked on
the real runtime with a small model (seconds, not a full V5):

- XNNPACK runs every aten.gelu as exact (erf) GELU, ignoring approximate="tanh"
  (pytorch/executorch#22851, after 1.5.1); `spell_out_tanh_gelu` writes tanh GELU in ops
  XNNPACK runs as written.
- The saved ETRecord drops non-persistent buffers (RMSNorm's constant 1/C kernel), so the
  Inspector could not rebuild the per-op twin's reference graph; the twin registers them as
  persistent while it is lowered."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

pytest.importorskip("executorch")

from mobile_export.executorch.lowering import TANH_GELU_EXACT, TANH_GELU_FAST, lower, spell_out_tanh_gelu  # noqa: E402
from mobile_export.models.blocks import RmsNormAct2d  # noqa: E402


class _ConvActConv(torch.nn.Module):
    def __init__(self, act: torch.nn.Module, norm: bool = False):
        super().__init__()
        self.conv_stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.norm = RmsNormAct2d(16) if norm else torch.nn.Identity()
        self.act = act
        self.head = torch.nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.head(self.act(self.norm(self.conv_stem(x))))


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    return 10.0 * float(np.log10(float((ref**2).sum()) / max(float(((ref - out) ** 2).sum()), 1e-30)))


def _run(program: bytes, x: torch.Tensor) -> torch.Tensor:
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(program).load_method("forward")
    return method.execute((x,))[0]


def _gelus(exported) -> list[str]:
    return [
        n.kwargs.get("approximate", "none")
        for n in exported.graph.nodes
        if n.target == torch.ops.aten.gelu.default
    ]


@pytest.fixture(scope="module")
def tanh_case():
    torch.manual_seed(0)
    model = _ConvActConv(torch.nn.GELU(approximate="tanh")).eval()
    x = torch.randn(1, 3, 24, 24) * 2.0  # wide enough that the erf/tanh gap shows
    with torch.no_grad():
        ref = model(x)
    return model, x, ref


def test_tanh_gelu_is_spelled_out_and_matches_pytorch(tanh_case):
    """The default: the .pte computes tanh GELU, as the model does."""
    model, x, ref = tanh_case
    exported = torch.export.export(model, (x,), strict=False)
    assert _gelus(exported) == ["tanh"]
    assert _gelus(spell_out_tanh_gelu(exported)) == []
    manager, delegation = lower(model, x)
    assert delegation["complete"] and delegation["outside"] == {}
    assert delegation["tanh_gelu"] == {"count": 1, "runs_as": TANH_GELU_EXACT}  # recorded in the manifest
    sqnr = _sqnr(ref, _run(manager.buffer, x))
    assert sqnr > 110.0, f"{sqnr:.1f} dB: tanh GELU is not computed as PyTorch computes it"


def test_fast_gelu_runs_xnnpack_erf_gelu(tanh_case):
    """--fast-gelu, and why the workaround exists: XNNPACK's own op is erf GELU. When an
    ExecuTorch upgrade fixes the delegate, this fails: then drop `spell_out_tanh_gelu`."""
    model, x, ref = tanh_case
    manager, delegation = lower(model, x, exact_tanh_gelu=False)
    assert delegation["tanh_gelu"] == {"count": 1, "runs_as": TANH_GELU_FAST}
    out = _run(manager.buffer, x)
    with torch.no_grad():
        erf = model.head(torch.nn.functional.gelu(model.conv_stem(x)))
    assert _sqnr(ref, out) < 90.0  # the erf/tanh gap, not float rounding
    assert _sqnr(erf, out) > 110.0  # it is exact GELU that ran


def test_fast_gelu_is_refused_for_a_model_without_tanh_gelu(cli, tmp_path):
    code, out, err = cli(
        "v1-025",
        "--target",
        "executorch",
        "--weights",
        "random",
        "--resolution",
        "32",
        "--fast-gelu",
        "--out",
        tmp_path / "out",
    )
    assert code == 2 and "--fast-gelu" in err and "does not use" in err, err
    assert [line for line in err.splitlines() if line.startswith("Error:")] == [err.strip().splitlines()[-1]]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_exact_gelu_stays_one_op():
    torch.manual_seed(0)
    model = _ConvActConv(torch.nn.GELU()).eval()
    x = torch.randn(1, 3, 24, 24)
    exported = torch.export.export(model, (x,), strict=False)
    assert spell_out_tanh_gelu(exported) is exported and _gelus(exported) == ["none"]
    with torch.no_grad():
        ref = model(x)
    manager, _ = lower(model, x)
    assert _sqnr(ref, _run(manager.buffer, x)) > 100.0


def test_per_op_twin_handles_non_persistent_buffers(one_thread):
    """RmsNormAct2d keeps its 1/C kernel out of the state dict (timm checkpoints load as they
    are); the twin must still give per-op rows, and leave the model as it found it."""
    from mobile_export.executorch.etdump import twin_values
    from mobile_export.verify.per_layer import collect

    torch.manual_seed(0)
    model = _ConvActConv(torch.nn.GELU(approximate="tanh"), norm=True).eval()
    keys = set(model.state_dict())
    assert not any(k.endswith("channel_mean") for k in keys)
    built = types.SimpleNamespace(module=model, preprocess=None, input_shape=(1, 3, 24, 24))
    feed = [np.random.default_rng(i).random((1, 3, 24, 24), dtype=np.float32) for i in range(2)]
    rows, _ = collect(lambda sink: twin_values(built, {"input": {"normalized_in_model": False}}, feed, sink))
    ops = {op for row in rows for op in row.op.split("+")}
    assert {"conv2d", "rsqrt", "sigmoid"} <= ops, ops
    assert any(row.module == "norm" for row in rows)
    assert min(row.sqnr_db for row in rows) > 100.0, [(r.name, r.sqnr_db) for r in rows]
    assert set(model.state_dict()) == keys  # buffers are non-persistent again
