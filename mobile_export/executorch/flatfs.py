"""Our own reader and writer of ExecuTorch's flattened-directory format: how the Core ML
delegate stores a folder (lowered_module/model.mlpackage, metadata.json, ...) as the one
byte string a delegate payload is.

Layout (upstream backends/apple/coreml/runtime/inmemoryfs, read, not copied): the bytes of
every file back to back (each at its `dataRegion.offset`, padding between them allowed),
then an index as JSON, written byte-reversed so that it ends the payload:
    {"nodes": [{"name", "kind": 0 file | 1 directory, "dataRegion": {"offset", "size"},
                "children": {name: index into nodes}}]}
Nodes are listed children first; the last node is the root directory. Offsets are relative
to the start of the payload.

Why our own: verify must not trust the code that wrote the file to read it back, and the
wheel's `executorchcoreml` module exists only for some platforms. The writer exists for
reproducible bytes (sorted names, no padding), see coreml_delegate."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ArtifactError

FILE, DIRECTORY = 0, 1


@dataclass
class Node:
    name: str
    kind: int
    offset: int = 0
    size: int = 0
    children: dict[str, Node] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return self.kind == DIRECTORY


def _index_length(reversed_tail: bytes) -> int:
    """Length of the JSON object at the start of `reversed_tail`: balanced braces, strings
    (with escapes) skipped, as upstream's reader scans it."""
    if not reversed_tail or reversed_tail[:1] != b"{":
        raise ArtifactError(
            "the Core ML payload does not end with a directory index (no '{' at its end); "
            "the file is damaged, export it again"
        )
    depth, in_string, escaped = 0, False, False
    for i, byte in enumerate(reversed_tail):
        ch = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    raise ArtifactError(
        "the Core ML payload's directory index is cut off; the file is damaged, export it again"
    )


MAX_INDEX_BYTES = 1 << 20  # an index of a few files is ~1 KB; a 1 MB scan bounds damaged input


def read_index(payload: bytes) -> tuple[Node, int]:
    """(root node, where the index starts) of a flattened directory; ArtifactError when the
    index is damaged or points outside the data."""
    tail = bytes(payload[-MAX_INDEX_BYTES:])[::-1]
    length = _index_length(tail)
    try:
        doc = json.loads(tail[:length].decode("utf-8"))
        raw = doc["nodes"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(
            f"the Core ML payload's directory index does not parse ({exc.__class__.__name__}); "
            "the file is damaged, export it again"
        ) from None
    index_start = len(payload) - length
    if not isinstance(raw, list) or not raw:
        raise ArtifactError(
            "the Core ML payload's directory index lists no files; the file is damaged, export it again"
        )
    nodes: list[Node] = []
    try:
        for i, item in enumerate(raw):
            kind = int(item["kind"])
            region = item.get("dataRegion") or {}
            node = Node(
                name=str(item["name"]),
                kind=kind,
                offset=int(region.get("offset", 0)),
                size=int(region.get("size", 0)),
            )
            if kind == FILE:
                if node.offset < 0 or node.size < 0 or node.offset + node.size > index_start:
                    raise ValueError(
                        f"file {node.name!r} lies outside the data ({node.offset}+{node.size} > {index_start})"
                    )
            elif kind == DIRECTORY:
                for child, j in (item.get("children") or {}).items():
                    if not 0 <= int(j) < i:  # children come first
                        raise ValueError(f"directory {node.name!r} names node {j} that does not precede it")
                    node.children[str(child)] = nodes[int(j)]
            else:
                raise ValueError(f"node {node.name!r} has unknown kind {kind}")
            if "/" in node.name or node.name in ("", ".", ".."):
                raise ValueError(f"node name {node.name!r} is not a plain name")
            nodes.append(node)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(
            f"the Core ML payload's directory index is inconsistent ({exc}); the file is damaged, "
            "export it again"
        ) from None
    root = nodes[-1]
    if not root.is_dir:
        raise ArtifactError(
            "the Core ML payload's last index node is not a directory; the file is damaged, export it again"
        )
    return root, index_start


def walk_files(root: Node, prefix: str = ""):
    """(relative path, node) of every file under `root`, sorted by path."""
    for name in sorted(root.children):
        node = root.children[name]
        path = f"{prefix}{name}"
        if node.is_dir:
            yield from walk_files(node, path + "/")
        else:
            yield path, node


def read_files(payload: bytes) -> dict[str, bytes]:
    """Relative path (under the root directory) -> content, for every file."""
    root, _ = read_index(payload)
    view = memoryview(payload)
    return {path: bytes(view[n.offset : n.offset + n.size]) for path, n in walk_files(root)}


def file_regions(payload: bytes) -> dict[str, tuple[int, int]]:
    """Relative path -> (offset, size) inside the payload (to locate e.g. weight.bin)."""
    root, _ = read_index(payload)
    return {path: (n.offset, n.size) for path, n in walk_files(root)}


def unflatten(payload: bytes, dest: str | Path) -> Path:
    """Write the flattened directory into the existing folder `dest` as the wheel's
    `unflatten_directory_contents` does: dest/<root name>/... Returns dest/<root name>."""
    root, _ = read_index(payload)
    top = Path(dest) / root.name
    top.mkdir(parents=True, exist_ok=True)
    view = memoryview(payload)
    for rel, node in walk_files(root):
        target = top / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(view[node.offset : node.offset + node.size])
    return top


def flatten(files: dict[str, bytes], root_name: str) -> bytes:
    """A flattened directory of `files` (relative path -> content) under a root named
    `root_name`: names sorted, files back to back without padding, so the same files give
    the same bytes."""
    tree: dict = {}
    for rel in sorted(files):
        parts = rel.split("/")
        here = tree
        for part in parts[:-1]:
            here = here.setdefault(part, {})
        here[parts[-1]] = rel
    data = bytearray()
    nodes: list[dict] = []

    def add(name: str, subtree) -> int:
        if isinstance(subtree, str):
            content = files[subtree]
            nodes.append(
                {
                    "children": {},
                    "dataRegion": {"offset": len(data), "size": len(content)},
                    "kind": FILE,
                    "name": name,
                }
            )
            data.extend(content)
            return len(nodes) - 1
        children = {child: add(child, subtree[child]) for child in sorted(subtree)}
        nodes.append(
            {"children": children, "dataRegion": {"offset": 0, "size": 0}, "kind": DIRECTORY, "name": name}
        )
        return len(nodes) - 1

    add(root_name, tree)
    index = json.dumps({"nodes": nodes}, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return bytes(data) + index[::-1]


def root_name(payload: bytes) -> str:
    return read_index(payload)[0].name


def directory_files(directory: str | Path) -> dict[str, bytes]:
    """Relative path -> content of every file under `directory` (for `flatten`)."""
    directory = Path(directory)
    out = {}
    for base, _dirs, names in os.walk(directory):
        for name in names:
            p = Path(base) / name
            out[p.relative_to(directory).as_posix()] = p.read_bytes()
    return out
