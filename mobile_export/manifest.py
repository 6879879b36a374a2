"""manifest.json: the versioned contract between the exporter, the verifier and the apps.

One manifest per output folder describes the model, the preprocessing contract, the
labels and every artifact (file, sha256, input/output contract, quantization, delegation,
parity). The JSON Schema in `manifest.schema.json` is the single definition; the apps read
the same fields (android_demo/.../Manifest.kt, ios_demo/.../Manifest.swift)."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata, resources
from pathlib import Path

from .errors import ArtifactError, ManifestError
from .fsutil import sha256_file, size_bytes, write_text_atomic

FORMAT = "mobile-export.manifest"
VERSION = 2  # 2: preprocess.source / preprocess.assumed, weights source "example", random weights' "init"
READS = (1, 2)  # version 1 folders still verify (their random weights are the plain init)
FILENAME = "manifest.json"
_SCHEMA_FILES = {1: "manifest.schema.v1.json", 2: "manifest.schema.json"}


@cache
def schema(version: int = VERSION) -> dict:
    return json.loads(resources.files(__package__).joinpath(_SCHEMA_FILES[version]).read_text())


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for dist in ("mobile-export", "torch", "executorch", "coremltools", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def new_manifest(built) -> dict:
    """The model part of a manifest, from a `models.BuiltModel`."""
    spec = built.spec
    out_shape = [1, built.num_classes] if spec.output == "logits" else None
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {
            "name": spec.name,
            "alias": spec.aliases[0],
            "family": spec.family,
            "variant": spec.variant,
            "width": spec.width,
            "paper": spec.paper,
            "reference": spec.reference,
            "params": sum(p.numel() for p in built.module.parameters()),
            "params_published": spec.params,
            "mmacs_published": spec.mmacs,
            "resolution": built.resolution,
            "num_classes": built.num_classes,
            "output": spec.output,
            "output_shape": out_shape,
            "weights": built.weights,
        },
        "preprocess": {
            **built.preprocess.to_dict(),
            "source": built.contract_source or "unknown",
            "assumed": bool(built.contract_assumed),
        },
        "labels": None,
        "artifacts": [],
        "versions": library_versions(),
    }


@dataclass
class ArtifactEntry:
    """One artifact of a manifest, typed where modules read it (verify, bench, bundle, the
    targets). `from_dict(d).to_dict() == d`, key order included: keys this version does not
    know (written by a newer exporter) are kept in `unknown`, so old and new manifests still
    verify and are rewritten byte for byte."""

    file: str = ""
    bytes: int = 0
    sha256: str = ""
    target: str | None = None
    format: str | None = None
    precision: str | None = None
    quantization: dict = field(default_factory=dict)
    input: dict = field(default_factory=dict)
    output: dict = field(default_factory=dict)
    delegation: dict | None = None
    coreml: dict | None = None
    export: dict = field(default_factory=dict)
    parity: dict | None = None
    unknown: dict = field(default_factory=dict)
    order: tuple[str, ...] = ()  # key order of the source; empty: the field order above

    @classmethod
    def from_dict(cls, d: dict) -> ArtifactEntry:
        if isinstance(d, ArtifactEntry):
            return d
        known = {k: v for k, v in d.items() if k in _ENTRY_FIELDS}
        return cls(**known, unknown={k: v for k, v in d.items() if k not in _ENTRY_FIELDS}, order=tuple(d))

    def to_dict(self) -> dict:
        keys = self.order or (*[k for k in _ENTRY_FIELDS if getattr(self, k) is not None], *self.unknown)
        return {k: (getattr(self, k) if k in _ENTRY_FIELDS else self.unknown[k]) for k in keys}

    # --- what readers ask ----------------------------------------------------------------

    @property
    def quantization_mode(self) -> str:
        return (self.quantization or {}).get("mode", "none")

    @property
    def quantized(self) -> bool:
        return self.quantization_mode not in (None, "none")

    @property
    def normalized_in_model(self) -> bool:
        return bool((self.input or {}).get("normalized_in_model"))

    @property
    def output_kind(self) -> str:
        return (self.output or {}).get("kind", "logits")

    @property
    def bundled(self) -> dict:
        """The .bpte record under export.bundled ({} when there is none)."""
        return (self.export or {}).get("bundled") or {}


_ENTRY_FIELDS = tuple(f for f in ArtifactEntry.__dataclass_fields__ if f not in ("unknown", "order"))


def artifact_record(path: str | Path, **fields) -> dict:
    """An artifact entry: file name, size and sha256 measured from disk, plus `fields`."""
    p = Path(path)
    return {"file": p.name, "bytes": size_bytes(p), "sha256": sha256_file(p), **fields}


def upsert_artifact(manifest: dict, record: dict) -> dict:
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["file"] != record["file"]] + [record]
    return manifest


def validate(doc: object, where: str = FILENAME) -> dict:
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: not a JSON object; re-export to regenerate it")
    if doc.get("format") != FORMAT:
        raise ManifestError(
            f"{where}: not a mobile-export manifest (format {doc.get('format')!r}); re-export to regenerate it"
        )
    version = doc.get("version")
    if isinstance(version, bool) or version not in READS:
        raise ManifestError(
            f"{where}: manifest version {version!r} is not supported (this mobile-export reads versions "
            f"{', '.join(map(str, READS))}); re-export with this version"
        )
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema(version))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        at = "/".join(str(p) for p in err.absolute_path) or "(top)"
        raise ManifestError(f"{where}: invalid at {at}: {err.message}; re-export to regenerate it")
    return doc


def write_manifest(directory: str | Path, manifest: dict) -> Path:
    validate(manifest)
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    return write_text_atomic(Path(directory) / FILENAME, text)


def read_manifest(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / FILENAME
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"no manifest at {str(p)!r}; export again or keep manifest.json beside the artifact"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(
            f"cannot read {str(p)!r} ({exc.__class__.__name__}); re-export to regenerate it"
        ) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{str(p)!r} is not valid JSON (line {exc.lineno}: {exc.msg}); re-export to regenerate it"
        ) from None
    return validate(doc, str(p))


def manifest_for(artifact: str | Path) -> tuple[dict, dict]:
    """The manifest beside `artifact` and the artifact's entry in it."""
    a = Path(artifact)
    manifest = read_manifest(a.parent / FILENAME)
    for entry in manifest["artifacts"]:
        if entry["file"] == a.name:
            return manifest, entry
    raise ManifestError(f"{a.name} is not listed in {a.parent / FILENAME}; export it again into that folder")


def entry_for(artifact: str | Path) -> tuple[dict, ArtifactEntry]:
    """`manifest_for`, with the artifact's entry typed."""
    manifest, entry = manifest_for(artifact)
    return manifest, ArtifactEntry.from_dict(entry)


def check_sha256(artifact: str | Path, entry: dict | ArtifactEntry) -> None:
    expected = ArtifactEntry.from_dict(entry).sha256
    actual = sha256_file(artifact)
    if actual != expected:
        raise ArtifactError(
            f"{Path(artifact).name}: sha256 {actual[:12]}… does not match the manifest ({expected[:12]}…); the file was changed or damaged, export it again"
        )
