"""Fixes to coremltools 9.0's PyTorch converter that change what a converted file computes.

tanh GELU: on the torch.export path the converter's `gelu` translation reads only positional
inputs, while `aten.gelu`'s `approximate` is keyword-only, so `gelu(x, approximate="tanh")`
becomes MIL `gelu(mode="EXACT")` (erf). The file then computes another function than the
model: MobileNetV5 (tanh GELU throughout) came out of fp32 conversion at 60.6 / 63.7 dB (300m /
base, 64 px, BN-woken weights) against PyTorch where fp32 gives > 90 dB; verify caught it. The
replacement reads the keyword and emits MIL's own TANH_APPROXIMATION mode (one op, as the
Neural Engine runs it). Both our Core ML target and ExecuTorch's Core ML delegate convert through
the registry this patches, so both call `apply()` before converting."""

from __future__ import annotations

_applied = False


def apply() -> None:
    """Register the keyword-aware `gelu` translation (idempotent; coremltools must be importable)."""
    global _applied
    if _applied:
        return
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op

    @register_torch_op(override=True)
    def gelu(context, node):
        inputs = ops._get_inputs(context, node, min_expected=1)
        approximate = _value(inputs[1]) if len(inputs) > 1 else None
        keyword = ops._get_kwinputs(context, node, "approximate")
        if keyword:
            approximate = _value(keyword[0])
        if approximate not in (None, "none", "tanh"):
            raise ValueError(f"gelu: unknown approximate={approximate!r}")
        # exact stays mode=None as upstream emits it: files without tanh GELU keep their bytes
        mode = "TANH_APPROXIMATION" if approximate == "tanh" else None
        context.add(mb.gelu(x=inputs[0], mode=mode, name=node.name))

    _applied = True


def _value(binding):
    """A constant input: a MIL var (its .val) or, for keyword inputs, the plain Python value."""
    return getattr(binding, "val", binding)
