"""The manifest contract: schema, versions, sha256 checks, atomic writes."""

import json
from pathlib import Path

import pytest
import torch

from mobile_export import manifest as mf
from mobile_export.errors import ArtifactError, ManifestError
from mobile_export.models import BuiltModel, get_spec


def _built(labels=None):
    spec = get_spec("v2")
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    return BuiltModel(
        module=module,
        spec=spec,
        preprocess=spec.weights[0].preprocess,
        num_classes=1000,
        resolution=224,
        weights={"source": "random", "seed": 0},
        labels=labels,
    )


def _manifest_with_artifact(tmp_path):
    art = tmp_path / "m.pte"
    art.write_bytes(b"\0\0\0\0ET12" + bytes(100))
    m = mf.new_manifest(_built())
    rec = mf.artifact_record(
        art,
        target="executorch",
        format="pte",
        precision="fp32",
        quantization={"mode": "none"},
        input={
            "name": "x",
            "kind": "tensor",
            "shape": [1, 3, 224, 224],
            "layout": "NCHW",
            "dtype": "float32",
            "color": "RGB",
            "value_range": [0, 1],
            "normalized_in_model": True,
        },
        output={"name": "logits", "kind": "logits", "shape": [1, 1000], "dtype": "float32"},
    )
    mf.upsert_artifact(m, rec)
    return m, art


def test_new_manifest_validates_and_round_trips(tmp_path):
    m, art = _manifest_with_artifact(tmp_path)
    mf.write_manifest(tmp_path, m)
    back = mf.read_manifest(tmp_path)
    assert back == json.loads(json.dumps(m))
    assert back["preprocess"]["resize"] == 256 and back["preprocess"]["crop"] == 224
    manifest, entry = mf.manifest_for(art)
    assert entry["sha256"] == mf.sha256_file(art) and entry["bytes"] == art.stat().st_size
    mf.check_sha256(art, entry)


def test_upsert_replaces_same_file(tmp_path):
    m, art = _manifest_with_artifact(tmp_path)
    rec = dict(m["artifacts"][0], precision="int8")
    mf.upsert_artifact(m, rec)
    assert len(m["artifacts"]) == 1 and m["artifacts"][0]["precision"] == "int8"


def test_sha_mismatch_is_one_line(tmp_path):
    m, art = _manifest_with_artifact(tmp_path)
    mf.write_manifest(tmp_path, m)
    art.write_bytes(art.read_bytes() + b"x")
    _, entry = mf.manifest_for(art)
    with pytest.raises(ArtifactError, match="does not match the manifest") as err:
        mf.check_sha256(art, entry)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"format": "other"}', "not a mobile-export manifest"),
        ('{"format": "mobile-export.manifest", "version": 99}', "version 99 is not supported"),
    ],
)
def test_bad_manifests_are_rejected(tmp_path, text, match):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ManifestError, match=match):
        mf.read_manifest(tmp_path)


def test_schema_violation_names_the_field(tmp_path):
    m, _ = _manifest_with_artifact(tmp_path)
    m["artifacts"][0]["sha256"] = "xyz"
    with pytest.raises(ManifestError, match="artifacts/0/sha256"):
        mf.validate(m)
    m, _ = _manifest_with_artifact(tmp_path)
    m["artifacts"][0]["file"] = "../escape.pte"
    with pytest.raises(ManifestError, match="artifacts/0/file"):
        mf.validate(m)


def test_missing_manifest_and_unlisted_artifact(tmp_path):
    with pytest.raises(ManifestError, match="no manifest"):
        mf.read_manifest(tmp_path)
    m, _ = _manifest_with_artifact(tmp_path)
    mf.write_manifest(tmp_path, m)
    other = tmp_path / "other.pte"
    other.write_bytes(b"x")
    with pytest.raises(ManifestError, match="not listed"):
        mf.manifest_for(other)


def test_invalid_manifest_is_never_written(tmp_path):
    m, _ = _manifest_with_artifact(tmp_path)
    m["version"] = 3
    with pytest.raises(ManifestError):
        mf.write_manifest(tmp_path, m)
    assert not (tmp_path / "manifest.json").exists()


def test_imagenet_labels_ship_with_the_package():
    from mobile_export.models import imagenet_labels

    labels = imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert labels[0] == "tench" and labels[207] == "golden retriever" and labels[999] == "toilet tissue"


# --- ArtifactEntry: typed, and byte-compatible with manifests written before it ----------------

MANIFEST_FIXTURES = sorted((Path(__file__).parent / "fixtures" / "manifests").glob("*.json"))


@pytest.mark.parametrize("path", MANIFEST_FIXTURES, ids=lambda p: p.stem)
def test_artifact_entries_of_older_manifests_round_trip_unchanged(path):
    from mobile_export.manifest import ArtifactEntry

    text = path.read_text(encoding="utf-8")
    doc = json.loads(text)
    doc["artifacts"] = [ArtifactEntry.from_dict(a).to_dict() for a in doc["artifacts"]]
    assert json.dumps(doc, indent=2) + "\n" == text  # the same bytes write_manifest would write


def test_artifact_entry_keeps_unknown_keys_in_place_and_reads_typed():
    from mobile_export.manifest import ArtifactEntry

    raw = {
        "file": "m.pte",
        "bytes": 10,
        "sha256": "ab",
        "from_the_future": {"x": 1},
        "target": "executorch",
        "quantization": {"mode": "pt2e-int8"},
        "input": {"normalized_in_model": True},
        "export": {"bundled": {"cases": 3}},
    }
    entry = ArtifactEntry.from_dict(raw)
    assert list(entry.to_dict()) == list(raw) and entry.to_dict() == raw
    assert entry.unknown == {"from_the_future": {"x": 1}}
    assert entry.quantized and entry.quantization_mode == "pt2e-int8"
    assert entry.normalized_in_model and entry.output_kind == "logits" and entry.bundled == {"cases": 3}
    plain = ArtifactEntry.from_dict({"file": "a.mlpackage", "bytes": 1, "sha256": "c", "precision": "fp16"})
    assert not plain.quantized and not plain.normalized_in_model and plain.bundled == {}
