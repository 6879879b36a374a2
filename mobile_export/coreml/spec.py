"""Reading a saved ML Program: the one place that parses `model.mlmodel` and walks its
protobuf (the main function, its block, the ops, nested blocks included). Used by the target
(checks, manifest facts), bench (op and dtype counts) and the Linux executor (mil/program.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..errors import ArtifactError
from .quiet import quiet

SPEC_FILE = "Data/com.apple.CoreML/model.mlmodel"
WEIGHTS_DIR = "Data/com.apple.CoreML/weights"
WEIGHTS_FILE = WEIGHTS_DIR + "/weight.bin"
PACKAGE_MANIFEST = "Manifest.json"


def read_spec(spec_path: str | Path, source: str | None = None):
    """The protobuf `Model` in a model.mlmodel file; ArtifactError naming `source` (default: the
    path) when it is missing or does not parse."""
    with quiet():
        from coremltools.proto import Model_pb2
    from google.protobuf.message import DecodeError

    spec_path = Path(spec_path)
    where = source or str(spec_path)
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(spec_path.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(
            f"{where}: {SPEC_FILE} is missing; the package is incomplete, export it again"
        ) from None
    except (DecodeError, OSError, ValueError) as exc:
        raise ArtifactError(
            f"{where}: {SPEC_FILE} does not parse ({exc.__class__.__name__}); the file is damaged, "
            "export it again"
        ) from None
    return spec


def load_spec(package: str | Path):
    """The protobuf `Model` of a saved .mlpackage (its fixed model.mlmodel path)."""
    package = Path(package)
    return read_spec(package / SPEC_FILE, package.name)


def package_paths(path: str | Path) -> tuple[Path, Path | None]:
    """(model.mlmodel, weights folder) of an .mlpackage (Manifest.json's root item), or of
    a bare .mlmodel file."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{str(p)!r} does not exist; pass the path of an .mlpackage")
    if p.is_file():
        return p, p.parent / "weights" if (p.parent / "weights").is_dir() else None
    spec_path = p / SPEC_FILE
    manifest = p / PACKAGE_MANIFEST
    if manifest.is_file():
        try:
            doc = json.loads(manifest.read_text())
            root = doc["itemInfoEntries"][doc["rootModelIdentifier"]]["path"]
            spec_path = p / "Data" / root
        except (ValueError, KeyError, TypeError):
            raise ArtifactError(
                f"{p.name}/Manifest.json is not a valid package manifest; re-export the .mlpackage"
            ) from None
    if not spec_path.is_file():
        raise ArtifactError(
            f"{p.name} has no {spec_path.relative_to(p)}; it is not a complete .mlpackage, re-export it"
        )
    return spec_path, spec_path.parent / "weights"


def main_function(spec, source: str = "<spec>"):
    """The program's `main` function; ArtifactError when the spec is not a complete ML Program."""
    if spec.WhichOneof("Type") != "mlProgram":
        raise ArtifactError(
            f"{source} holds a {spec.WhichOneof('Type')} model, not an ML Program; re-export with convert_to='mlprogram'"
        )
    if "main" not in spec.mlProgram.functions:
        raise ArtifactError(f"{source}: the ML Program has no 'main' function; re-export the model")
    function = spec.mlProgram.functions["main"]
    if function.opset not in function.block_specializations:
        raise ArtifactError(
            f"{source}: function 'main' has no block for its opset {function.opset}; re-export the model"
        )
    return function


def main_block(spec, source: str = "<spec>"):
    function = main_function(spec, source)
    return function.block_specializations[function.opset]


def opset(spec) -> str:
    return main_function(spec).opset


def operations(spec) -> list:
    """Top-level operations of the main function, in program order."""
    return list(main_block(spec).operations)


def walk_operations(spec) -> Iterator:
    """Every operation, nested blocks included, in program order (depth first)."""

    def walk(ops):
        for op in ops:
            yield op
            for block in op.blocks:
                yield from walk(block.operations)

    yield from walk(main_block(spec).operations)


def op_types(spec) -> list[str]:
    """Sorted distinct MIL op types of the program (nested blocks included)."""
    return sorted({op.type for op in walk_operations(spec)})


def blob_files(spec) -> set[str]:
    """Weight files the program's constants point into (as written: "@model_path/weights/...")."""
    files = set()

    def visit(value):
        if value.HasField("blobFileValue"):
            files.add(value.blobFileValue.fileName)

    for op in walk_operations(spec):
        for attr in op.attributes.values():
            visit(attr)
        for arg in op.inputs.values():
            for binding in arg.arguments:
                if binding.HasField("value"):
                    visit(binding.value)
    return files


def producers(spec) -> dict:
    """Value name -> the top-level operation that produces it."""
    return {out.name: op for op in operations(spec) for out in op.outputs}


def argument_names(op, param: str) -> list[str]:
    """Names of the values bound to one parameter of an operation."""
    if param not in op.inputs:
        return []
    return [b.name for b in op.inputs[param].arguments if b.name]
