"""Load a saved ML Program (.mlpackage) from disk and run it on the CPU.

Loading parses `Data/com.apple.CoreML/model.mlmodel` with coremltools' protobuf classes,
reads constants from `weights/weight.bin`, decompresses constexpr ops once, and turns each
remaining op into a closure with its constant arguments bound. Running is then a straight
walk over those closures. Every output is rounded to the type the program declares for it
(fp16 storage is emulated as fp32 arithmetic rounded to fp16 after each op), which is what
an fp16 ML Program promises; it is not a model of the Neural Engine's internal arithmetic."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ...errors import ArtifactError, UnsupportedOpError, UsageError
from ..spec import main_function, package_paths, read_spec
from .constexpr import CONSTEXPR_OPS
from .values import TYPE_NAME, Blobs, parse_value, tensor_shape


def supported_ops() -> frozenset[str]:
    from .ops import OPS

    return frozenset(OPS) | frozenset(CONSTEXPR_OPS) | {"const"}


@dataclass
class InputInfo:
    name: str
    kind: str  # "image" | "tensor"
    shape: tuple[int, ...]  # the program's tensor shape (1, C, H, W for images)
    dtype: str  # the program's dtype: fp32, fp16, int32 ...
    color_layout: str | None = None  # RGB | BGR | GRAYSCALE for images


@dataclass
class OpInfo:
    index: int
    type: str
    name: str
    outputs: list[str]
    output_types: list[str]
    inputs: dict[str, list[str]] = field(default_factory=dict)  # param -> names of values it reads


@dataclass
class _Step:
    info: OpInfo
    run: Callable[[dict], None]
    frees: tuple[str, ...] = ()  # values no later op reads: dropped after this step


@dataclass
class Checkpoint:
    """A run stopped before op `step`: the values alive there (see `Program.start`)."""

    env: dict
    step: int


class Program:
    """A loaded ML Program: `run(feeds)` executes it; `ops`, `inputs`, `outputs` describe it."""

    def __init__(self, spec, weights_dir: Path | None, source: str = "<spec>", threads: int | None = None):
        self.spec = spec
        self.source = source
        # One thread by default: a single image through a MobileNet is too small to gain from
        # more, and on a shared CPU extra threads spin against other processes (measured 0.05 s
        # on one thread vs 2-6 s on two under load). Results do not depend on it.
        self.threads = threads or int(os.environ.get("MOBILE_EXPORT_MIL_THREADS", "1"))
        function = main_function(spec, source)
        self.opset = function.opset
        block = function.block_specializations[self.opset]
        self._blobs = Blobs(weights_dir)
        self._types: dict[str, int] = {}  # value name -> MIL DataType code
        self._shapes: dict[str, tuple[int, ...]] = {}  # value name -> declared shape
        self.inputs = self._describe_inputs(function)
        self.outputs: list[str] = list(block.outputs)
        self.ops: list[OpInfo] = []
        self.consts: dict[str, object] = {}  # name -> numpy value (const and decompressed constexpr)
        self._static: dict[str, object] = {}  # name -> runtime value (torch) of every constant
        self._steps: list[_Step] = []
        self._load_block(block)

    # --- loading -----------------------------------------------------------------------

    def _describe_inputs(self, function) -> list[InputInfo]:
        described = {f.name: f for f in self.spec.description.input}
        infos = []
        for named in function.inputs:
            tt = named.type.tensorType
            dtype_name = TYPE_NAME.get(tt.dataType, str(tt.dataType))
            feature = described.get(named.name)
            if feature is not None and feature.type.WhichOneof("Type") == "imageType":
                from coremltools.proto import FeatureTypes_pb2

                layout = FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(feature.type.imageType.colorSpace)
                infos.append(InputInfo(named.name, "image", tensor_shape(tt), dtype_name, layout))
            else:
                infos.append(InputInfo(named.name, "tensor", tensor_shape(tt), dtype_name))
            self._types[named.name] = tt.dataType
        return infos

    def _load_block(self, block) -> None:
        import torch  # noqa: F401  (ops need it; fail early if missing)

        from .ops import OPS

        for index, op_spec in enumerate(block.operations):
            outputs = [o.name for o in op_spec.outputs]
            out_codes = [
                o.type.tensorType.dataType if o.type.WhichOneof("type") == "tensorType" else 0
                for o in op_spec.outputs
            ]
            name = _op_name(op_spec, outputs)
            info = OpInfo(
                index,
                op_spec.type,
                name,
                outputs,
                [TYPE_NAME.get(c, "?") for c in out_codes],
                {
                    k: [b.name for b in arg.arguments if b.WhichOneof("binding") == "name"]
                    for k, arg in op_spec.inputs.items()
                },
            )
            self.ops.append(info)
            for out, code in zip(outputs, out_codes):
                self._types[out] = code
            for o in op_spec.outputs:
                if o.type.WhichOneof("type") == "tensorType":
                    self._shapes[o.name] = tensor_shape(o.type.tensorType)
            if len(op_spec.blocks):
                raise UnsupportedOpError(
                    f"MIL op {op_spec.type!r} ({name!r}, op #{index} of main) has nested blocks (control flow), which the Linux executor does not run; export a model without control flow"
                )
            if op_spec.type == "const":
                self._set_const(outputs[0], parse_value(op_spec.attributes["val"], self._blobs))
            elif op_spec.type in CONSTEXPR_OPS:
                self._load_constexpr(op_spec, info)
            elif op_spec.type in OPS:
                self._steps.append(_Step(info, self._bind(op_spec, info, OPS[op_spec.type], out_codes)))
            else:
                raise UnsupportedOpError(
                    f"MIL op {op_spec.type!r} ({name!r}, op #{index} of main in {self.source}) is not supported by the "
                    f"Linux executor; export without the layer that produces it or add it to mobile_export/coreml/mil/ops.py"
                )
        known = (
            set(self._static)
            | {s for step in self._steps for s in step.info.outputs}
            | {i.name for i in self.inputs}
        )
        missing = [o for o in self.outputs if o not in known]
        if missing:
            raise ArtifactError(
                f"{self.source}: program outputs {missing} are produced by no op; the model file is damaged, re-export it"
            )
        self._plan_frees()

    def _plan_frees(self) -> None:
        """Free each intermediate after its last reader: keeping every activation of
        MobileNetV5 at 768 px took the executor to 15.9 GB."""
        last_reader: dict[str, int] = {}
        for i, step in enumerate(self._steps):
            for names in step.info.inputs.values():
                for name in names:
                    last_reader[name] = i
        keep = set(self.outputs) | set(self._static)
        frees: dict[int, list[str]] = {}
        for name, i in last_reader.items():
            if name not in keep:
                frees.setdefault(i, []).append(name)
        for i, step in enumerate(self._steps):
            step.frees = tuple(sorted(frees.get(i, ())))

    def _set_const(self, name: str, value) -> None:
        self.consts[name] = value
        self._static[name] = _to_runtime(value)

    def _params(self, op_spec, info: OpInfo) -> dict:
        """Parameters of a constexpr op: iOS16 in attributes, iOS18 in inputs."""
        params = {k: parse_value(v, self._blobs) for k, v in op_spec.attributes.items() if k != "name"}
        for key, arg in op_spec.inputs.items():
            binding = arg.arguments[0]
            if binding.WhichOneof("binding") == "value":
                params[key] = parse_value(binding.value, self._blobs)
            elif binding.name in self.consts:
                params[key] = self.consts[binding.name]
            else:
                raise ArtifactError(
                    f"{self.source}: {info.type} {info.name!r} reads {binding.name!r}, which is not a constant; the model file is damaged, re-export it"
                )
        return params

    def _load_constexpr(self, op_spec, info: OpInfo) -> None:
        params = self._params(op_spec, info)
        try:
            result = CONSTEXPR_OPS[op_spec.type](params)
        except (KeyError, ValueError, IndexError, TypeError) as exc:
            raise ArtifactError(
                f"{self.source}: cannot decompress {info.type} {info.name!r} ({exc.__class__.__name__}: {exc}); the compressed weights are damaged, re-export the model"
            ) from None
        results = result if isinstance(result, tuple) else (result,)
        for out, value, type_name in zip(info.outputs, results, info.output_types):
            value = np.asarray(value)
            if type_name == "fp16":
                value = value.astype(np.float16)
            elif type_name == "fp32":
                value = value.astype(np.float32)
            self._set_const(out, value)

    def _bind(self, op_spec, info: OpInfo, impl, out_codes: list[int]) -> Callable[[dict], None]:
        """One closure per op: constant arguments resolved now, named values looked up at run time."""
        static: dict = {}
        dynamic: list[tuple[str, object]] = []  # (param, name) or (param, [name-or-const, ...]) for variadic
        for param, arg in op_spec.inputs.items():
            items = []
            for binding in arg.arguments:
                if binding.WhichOneof("binding") == "value":
                    items.append(("const", _to_runtime(parse_value(binding.value, self._blobs))))
                elif binding.name in self._static:
                    items.append(("const", self._static[binding.name]))
                else:
                    items.append(("ref", binding.name))
            variadic = len(items) > 1 or param in _VARIADIC
            if all(kind == "const" for kind, _ in items):
                static[param] = [v for _, v in items] if variadic else items[0][1]
            elif variadic:
                dynamic.append((param, items))
            else:
                dynamic.append((param, items[0][1]))
        finishers = [_finisher(code) for code in out_codes]
        outputs = info.outputs
        where = f"{info.type} {info.name!r} (op #{info.index} of main in {self.source})"

        def run(env: dict) -> None:
            args = dict(static)
            for param, ref in dynamic:
                if isinstance(ref, str):
                    args[param] = env[ref]
                else:
                    args[param] = [env[v] if kind == "ref" else v for kind, v in ref]
            try:
                result = impl(args)
            except (RuntimeError, ValueError, IndexError, KeyError, TypeError) as exc:
                raise ArtifactError(
                    f"{where} failed: {str(exc).splitlines()[0]}; the program's shapes or constants are inconsistent, re-export the model"
                ) from None
            results = result if isinstance(result, tuple) else (result,)
            for out, value, finish in zip(outputs, results, finishers):
                env[out] = finish(value)

        return run

    # --- running -----------------------------------------------------------------------

    def run(self, feeds: dict, capture: Iterable[str] | None = None) -> dict:
        """Execute the program on one set of inputs.

        feeds: input name -> value. Image inputs take RGB pixel values 0..255 as a PIL image,
        an HxWx3 array, or a 1x3xHxW / 3xHxW array; they are put into the declared colour
        layout and the program's own ops apply the ImageType scale and bias, as Core ML does.
        Tensor inputs take arrays of the declared shape, rounded to the declared dtype.
        capture: names of intermediate values (op outputs) or ops to return as well.
        Returns the program outputs (numpy arrays in the declared dtype; a classifier gives
        its label and a {label: probability} dict) plus each captured value."""
        return self.resume(self.start(feeds), capture)

    def start(self, feeds: dict) -> Checkpoint:
        """A checkpoint before the first op, for `advance` and `resume` (inputs as for `run`)."""
        env: dict = {}
        for info in self.inputs:
            if info.name not in feeds:
                raise UsageError(
                    f"no value for input {info.name!r}; pass feeds={{{info.name!r}: array}} ({info.kind} {info.shape})"
                )
            env[info.name] = self._feed(info, feeds[info.name])
        return Checkpoint(env, 0)

    def advance(self, point: Checkpoint, step: int) -> None:
        """Run `point` forward to just before op `step` (see `first_reader`), so that runs
        differing only from there on share the work before it."""
        if step < point.step:
            raise UsageError(f"cannot advance a checkpoint at op {point.step} back to op {step}")
        self._execute(point.env, point.step, step, set(), {})
        point.step = step

    def resume(self, point: Checkpoint, capture: Iterable[str] | None = None) -> dict:
        """Finish the run from `point` with the constants as they are now; `point` is left
        as it was. Captured values must be alive at the checkpoint or computed after it."""
        env = dict(point.env)  # ops never write into their inputs: a shallow copy suffices
        wanted = self._capture_names(capture)
        captured = {name: _to_numpy(env[name], self._types.get(name, 11)) for name in wanted & set(env)}
        self._execute(env, point.step, len(self._steps), wanted, captured)
        result = {}
        for name in self.outputs:
            value = env[name] if name in env else self._static[name]
            result[name] = _to_numpy(value, self._types.get(name, 11))
        for name in wanted:
            if name in self._static and name not in captured:
                captured[name] = _to_numpy(self._static[name], self._types.get(name, 11))
        missing = wanted - set(captured)
        if missing:
            raise UsageError(
                f"cannot capture {sorted(missing)[0]!r} from op {point.step} on: it was computed and freed before; "
                "resume from an earlier checkpoint"
            )
        result.update(captured)
        return result

    def first_reader(self, name: str) -> int | None:
        """Index of the first op that reads value or constant `name`; None if no op does."""
        return next(
            (
                i
                for i, step in enumerate(self._steps)
                if any(name in names for names in step.info.inputs.values())
            ),
            None,
        )

    def quantized_values(self) -> list[str]:
        """The float values a `quantize` op reads (W8A8's int8 activations), in program order."""
        names: list[str] = []
        for step in self._steps:
            if step.info.type == "quantize":
                name = step.info.inputs["input"][0]
                if name not in names:
                    names.append(name)
        return names

    @contextlib.contextmanager
    def float_values(self, names: Iterable[str]):
        """Within the block, every quantize reading one of `names` and the dequantize reading
        it pass the value through: the program computes what it would with those pairs
        removed (`coreml.compress` removes them so, for W8A8 with fp16 activations)."""
        names = set(names)
        saved = {}
        bypassed: set[str] = set()  # outputs of the bypassed quantize ops
        for i, step in enumerate(self._steps):
            kind, source = step.info.type, step.info.inputs.get("input", [None])[0]
            if (kind == "quantize" and source in names) or (kind == "dequantize" and source in bypassed):
                out = step.info.outputs[0]
                saved[i] = step.run
                step.run = lambda env, source=source, out=out: env.__setitem__(out, env[source])
                if kind == "quantize":
                    bypassed.add(out)
        try:
            yield
        finally:
            for i, run in saved.items():
                self._steps[i].run = run

    def _execute(self, env: dict, start: int, stop: int, wanted: set[str], captured: dict) -> None:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                for step in self._steps[start:stop]:
                    step.run(env)
                    for out in step.info.outputs:
                        if out in wanted:
                            captured[out] = _to_numpy(env[out], self._types.get(out, 11))
                    for name in step.frees:
                        env.pop(name, None)
        finally:
            torch.set_num_threads(threads)

    def _capture_names(self, capture) -> set[str]:
        if not capture:
            return set()
        by_op = {info.name: info.outputs for info in self.ops}
        names: set[str] = set()
        for name in capture:
            if name in by_op:
                names.update(by_op[name])
            elif name in self._types:
                names.add(name)
            else:
                raise UsageError(
                    f"cannot capture {name!r}: no op or value of that name in the program; see Program.value_names()"
                )
        return names

    def _feed(self, info: InputInfo, value):
        import torch

        if info.kind == "image":
            arr = image_to_tensor(value, info)
        else:
            arr = np.asarray(value)
            if (
                info.shape
                and -1 not in info.shape
                and arr.size == int(np.prod(info.shape))
                and arr.shape != info.shape
            ):
                arr = arr.reshape(info.shape)
            if info.shape and -1 not in info.shape and arr.shape != tuple(info.shape):
                raise UsageError(f"input {info.name!r} must have shape {tuple(info.shape)}, got {arr.shape}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
        return _finisher(self._types[info.name])(t)

    # --- description -------------------------------------------------------------------

    def op_types(self) -> list[str]:
        """Sorted distinct op types, constants and constexpr ops included."""
        return sorted({info.type for info in self.ops})

    def op_counts(self) -> dict[str, int]:
        return dict(Counter(info.type for info in self.ops))

    def value_names(self) -> list[str]:
        """Outputs of every computing op (not constants), in program order."""
        return [out for step in self._steps for out in step.info.outputs]

    def compute_ops(self) -> list[OpInfo]:
        return [step.info for step in self._steps]

    def shape_of(self, name: str) -> tuple[int, ...] | None:
        """The shape the program declares for a value (-1 for unknown sizes)."""
        return self._shapes.get(name)

    def value_type(self, name: str) -> str:
        return TYPE_NAME.get(self._types.get(name, 0), "?")

    @property
    def classifier(self) -> bool:
        return any(info.type == "classify" for info in self.ops)

    def output_vector(self, outputs: dict) -> np.ndarray:
        """The main numeric result as float32 1xN: a classifier's probabilities in class
        order, else the first tensor output."""
        for info in self.ops:
            if info.type == "classify":
                probs = outputs[info.outputs[1]]
                return np.asarray(list(probs.values()), dtype=np.float32)[None]
        for name in self.outputs:
            value = outputs[name]
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                return value.astype(np.float32).reshape(value.shape[0] if value.ndim > 1 else 1, -1)
        raise UsageError(f"{self.source} has no numeric output")


_VARIADIC = {"values"}  # concat/stack take a list even with one element


def _op_name(op_spec, outputs: list[str]) -> str:
    attr = op_spec.attributes.get("name")
    if attr is not None and attr.immediateValue.tensor.strings.values:
        return attr.immediateValue.tensor.strings.values[0]
    return outputs[0] if outputs else op_spec.type


def _to_runtime(value):
    """numpy constant -> torch tensor (floats as float32: fp16 widens exactly); str/list kept."""
    import torch

    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return value.tolist()
        if value.dtype.kind == "f":
            return torch.from_numpy(np.array(value, dtype=np.float32, copy=True))
        if value.dtype == np.uint16 or value.dtype == np.uint32:
            return torch.from_numpy(value.astype(np.int64))
        return torch.from_numpy(np.array(value, copy=True))
    if isinstance(value, list):
        return [_to_runtime(v) for v in value]
    return value


def _finisher(code: int):
    """Round/convert an op's result to the type the program declares for it."""
    import torch

    if code == 10:  # fp16: round to half precision, keep computing in float32
        return lambda t: t.to(torch.float16).to(torch.float32) if isinstance(t, torch.Tensor) else t
    target = {
        11: torch.float32,
        12: torch.float32,
        21: torch.int8,
        22: torch.int16,
        23: torch.int32,
        24: torch.int64,
        31: torch.uint8,
        1: torch.bool,
    }.get(code)
    if target is None:
        return lambda t: t
    return lambda t: t.to(target) if isinstance(t, torch.Tensor) and t.dtype != target else t


_NUMPY_OUT = {
    10: np.float16,
    11: np.float32,
    12: np.float64,
    21: np.int8,
    22: np.int16,
    23: np.int32,
    24: np.int64,
    31: np.uint8,
    1: np.bool_,
}


def _to_numpy(value, code: int):
    import torch

    if isinstance(value, torch.Tensor):
        arr = value.detach().numpy()
        dtype = _NUMPY_OUT.get(code)
        return arr.astype(dtype) if dtype is not None and arr.dtype != dtype else arr.copy()
    return value


def image_to_tensor(value, info: InputInfo) -> np.ndarray:
    """RGB pixels (PIL image, HxWx3, 3xHxW or 1x3xHxW; values 0..255) -> the float32
    1xCxHxW tensor Core ML hands the program for this ImageType."""
    if hasattr(value, "convert") and hasattr(value, "size"):  # PIL image
        value = np.asarray(value.convert("L" if info.color_layout.startswith("GRAYSCALE") else "RGB"))
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None, None]
    elif arr.ndim == 3 and arr.shape[-1] in (1, 3) and arr.shape[0] not in (1, 3):
        arr = arr.transpose(2, 0, 1)[None]
    elif arr.ndim == 3:
        arr = arr[None]
    channels = 1 if info.color_layout.startswith("GRAYSCALE") else 3
    if arr.ndim != 4 or arr.shape[1] != channels:
        raise UsageError(
            f"image input {info.name!r} needs {channels}-channel pixels (HxWx{channels} or 1x{channels}xHxW), got shape {np.shape(value)}"
        )
    if info.color_layout == "BGR":
        arr = arr[:, ::-1]
    want = tuple(info.shape)
    if -1 not in want and arr.shape != want:
        raise UsageError(
            f"image input {info.name!r} must be {want[3]}x{want[2]} pixels, got {arr.shape[3]}x{arr.shape[2]}; resize and crop first"
        )
    return np.ascontiguousarray(arr)


def load_program(path: str | Path, threads: int | None = None) -> Program:
    """Load an .mlpackage (or a bare model.mlmodel beside its weights/) from disk."""
    spec_path, weights = package_paths(path)
    return Program(read_spec(spec_path, Path(path).name), weights, source=Path(path).name, threads=threads)


def program_from_spec(spec, weights_dir: str | Path | None) -> Program:
    """A Program from an in-memory spec plus the weights folder it refers to (how
    coremltools' MLModel and its calibration hold a model)."""
    return Program(spec, Path(weights_dir) if weights_dir else None, source="<spec>")
