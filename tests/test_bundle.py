"""Bundling into the demo apps: hashes checked first, nothing lands outside the app,
atomic replacement, and a truthful report of what changed."""

import json
import os
import shutil

import pytest

from mobile_export import bundle as bd
from mobile_export import manifest as mf
from mobile_export.errors import ArtifactError, ManifestError, RuntimeVersionError, UsageError
from mobile_export.models import BuiltModel, get_spec

INPUT = {
    "name": "x",
    "kind": "tensor",
    "shape": [1, 3, 224, 224],
    "layout": "NCHW",
    "dtype": "float32",
    "color": "RGB",
    "value_range": [0, 1],
    "normalized_in_model": True,
}
OUTPUT = {"name": "logits", "kind": "logits", "shape": [1, 3], "dtype": "float32"}


class _Params:
    """Stands in for an nn.Module only where the manifest counts parameters."""

    def parameters(self):
        class P:
            def numel(self):
                return 1234

        return [P()]


def _export_folder(folder, name="v2", payload=b"weights", labels=("cat", "dog", "café")):
    """A folder as the exporter leaves it: artifacts, labels.txt, manifest.json."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = get_spec(name)
    built = BuiltModel(
        module=_Params(),
        spec=spec,
        preprocess=spec.preprocess,
        num_classes=len(labels),
        resolution=224,
        weights={"source": "random", "seed": 0},
        labels=list(labels),
    )
    m = mf.new_manifest(built)
    (folder / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    m["labels"] = {
        "file": "labels.txt",
        "count": len(labels),
        "sha256": mf.sha256_file(folder / "labels.txt"),
    }
    pte = folder / f"{spec.name}_fp32.pte"
    pte.write_bytes(b"\0\0\0\0ET12" + payload * 50)
    bpte = folder / f"{spec.name}_fp32.bpte"
    bpte.write_bytes(b"\0\0\0\0BP08" + payload * 60)
    pkg = folder / f"{spec.name}_fp16.mlpackage"
    (pkg / "Data" / "com.apple.CoreML" / "weights").mkdir(parents=True, exist_ok=True)
    (pkg / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}')
    (pkg / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"proto" + payload)
    (pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").write_bytes(payload * 70)
    for path, target, fmt in (
        (pte, "executorch", "pte"),
        (bpte, "executorch", "bpte"),
        (pkg, "coreml", "mlpackage"),
    ):
        mf.upsert_artifact(
            m,
            mf.artifact_record(
                path,
                target=target,
                format=fmt,
                precision="fp32",
                quantization={"mode": "none"},
                input=INPUT,
                output=OUTPUT,
            ),
        )
    mf.write_manifest(folder, m)
    return {"pte": pte, "bpte": bpte, "mlpackage": pkg, "manifest": m}


def _android_app(folder, executorch="1.5.1"):
    """An Android app folder with its Gradle version catalog pinning `executorch`."""
    (folder / "app" / "src" / "main").mkdir(parents=True, exist_ok=True)
    (folder / "gradle").mkdir(exist_ok=True)
    (folder / "gradle" / "libs.versions.toml").write_text(
        f'[versions]\nkotlin = "2.2.21"\nexecutorch = "{executorch}"\n'
    )
    return folder


@pytest.fixture
def android_app(tmp_path):
    return _android_app(tmp_path / "android_demo")


def _actions(result):
    return {c["file"]: c["action"] for c in result["changes"]}


def test_android_bundle_copies_checks_and_reports(tmp_path, android_app):
    exp = _export_folder(tmp_path / "exports" / "v2")
    logs = []
    result = bd.bundle_artifacts(
        [exp["pte"], exp["bpte"]], app="android", app_dir=android_app, log=logs.append
    )
    assets = android_app / "app" / "src" / "main" / "assets"
    assert result["destination"] == str(assets.resolve())
    assert _actions(result) == {
        exp["pte"].name: "added",
        exp["bpte"].name: "added",
        "labels.txt": "added",
        "manifest.json": "added",
    }
    for name in (exp["pte"].name, exp["bpte"].name, "labels.txt"):
        assert (assets / name).read_bytes() == (exp["pte"].parent / name).read_bytes()
    sizes = {c["file"]: c["bytes"] for c in result["changes"]}
    assert sizes[exp["pte"].name] == exp["pte"].stat().st_size
    # The app's manifest lists exactly what was copied, and still validates.
    app_manifest = mf.read_manifest(assets)
    assert [a["file"] for a in app_manifest["artifacts"]] == [exp["pte"].name, exp["bpte"].name]
    assert app_manifest["labels"]["count"] == 3
    text = bd.format_changes(result)
    assert f"added      {exp['pte'].name}  {exp['pte'].stat().st_size:,} bytes" in text
    assert text.splitlines()[-1].endswith(str(assets.resolve()))

    # Again: nothing changes on disk, and the report says so.
    mtime = (assets / exp["pte"].name).stat().st_mtime_ns
    again = bd.bundle_artifacts([exp["pte"], exp["bpte"]], app="android", app_dir=android_app)
    assert set(_actions(again).values()) == {"unchanged"}
    assert (assets / exp["pte"].name).stat().st_mtime_ns == mtime


def test_replaced_artifact_reports_old_and_new_size(tmp_path, android_app):
    exp = _export_folder(tmp_path / "e")
    bd.bundle_artifacts([exp["pte"]], app="android", app_dir=android_app)
    old = exp["pte"].stat().st_size
    exp2 = _export_folder(tmp_path / "e", payload=b"retrained-weights")  # same names, new bytes
    result = bd.bundle_artifacts([exp2["pte"]], app="android", app_dir=android_app)
    change = next(c for c in result["changes"] if c["file"] == exp2["pte"].name)
    assert (
        change["action"] == "replaced"
        and change["old_bytes"] == old
        and change["bytes"] == exp2["pte"].stat().st_size
    )
    assert f"{old:,} -> {change['bytes']:,} bytes" in bd.format_changes(result)
    assets = android_app / "app" / "src" / "main" / "assets"
    assert (assets / exp2["pte"].name).read_bytes() == exp2["pte"].read_bytes()


def test_other_platform_artifacts_are_skipped_or_refused(tmp_path, android_app):
    exp = _export_folder(tmp_path / "e")
    result = bd.bundle_artifacts([exp["pte"], exp["mlpackage"]], app="android", app_dir=android_app)
    assert _actions(result)[exp["mlpackage"].name] == "skipped"
    assert not (android_app / "app" / "src" / "main" / "assets" / exp["mlpackage"].name).exists()
    with pytest.raises(UsageError, match="--app ios"):
        bd.bundle_artifacts([exp["mlpackage"]], app="android", app_dir=android_app)


def test_ios_bundle_copies_the_package_directory(tmp_path):
    exp = _export_folder(tmp_path / "e")
    app = tmp_path / "ios_demo"
    app.mkdir()
    result = bd.bundle_artifacts([exp["mlpackage"]], app="ios", app_dir=app)
    dest = app / "MobileNetDemo" / "Models" / exp["mlpackage"].name
    assert dest.is_dir() and mf.sha256_file(dest) == mf.sha256_file(exp["mlpackage"])
    assert _actions(result)[exp["mlpackage"].name] == "added"
    assert [a["format"] for a in mf.read_manifest(dest.parent)["artifacts"]] == ["mlpackage"]


def test_sha_mismatch_refuses_before_writing(tmp_path, android_app):
    exp = _export_folder(tmp_path / "e")
    exp["pte"].write_bytes(exp["pte"].read_bytes()[:-1] + b"X")  # one flipped byte
    with pytest.raises(ArtifactError, match="does not match the manifest") as err:
        bd.bundle_artifacts([exp["bpte"], exp["pte"]], app="android", app_dir=android_app)
    assert "\n" not in str(err.value)
    assert not (android_app / "app" / "src" / "main" / "assets").exists()


def test_changed_labels_are_refused(tmp_path, android_app):
    exp = _export_folder(tmp_path / "e")
    (exp["pte"].parent / "labels.txt").write_text("cat\ndog\nbird\n")
    with pytest.raises(ArtifactError, match="labels"):
        bd.bundle_artifacts([exp["pte"]], app="android", app_dir=android_app)


@pytest.mark.parametrize("evil", ["../../outside.txt", "/etc/passwd", "..", "sub/labels.txt", "..\\x.txt"])
def test_manifest_names_that_escape_are_refused(tmp_path, android_app, evil):
    exp = _export_folder(tmp_path / "e")
    folder = exp["pte"].parent
    doc = json.loads((folder / "manifest.json").read_text())
    doc["labels"]["file"] = evil
    (folder / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="file name"):
        bd.bundle_artifacts([exp["pte"]], app="android", app_dir=android_app)
    assert not (tmp_path / "outside.txt").exists()
    assert not (android_app / "app" / "src" / "main" / "assets").exists()


def test_symlinked_assets_folder_leading_out_is_refused(tmp_path, android_app):
    exp = _export_folder(tmp_path / "e")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, android_app / "app" / "src" / "main" / "assets")
    with pytest.raises(UsageError, match="outside the app folder"):
        bd.bundle_artifacts([exp["pte"]], app="android", app_dir=android_app)
    assert list(outside.iterdir()) == []


def test_symlinked_destination_file_is_refused(tmp_path, android_app):
    exp = _export_folder(tmp_path / "e")
    assets = android_app / "app" / "src" / "main" / "assets"
    assets.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, assets / "labels.txt")
    with pytest.raises(UsageError, match="outside the app folder|symlink"):
        bd.bundle_artifacts([exp["pte"]], app="android", app_dir=android_app)
    assert victim.read_text() == "keep me"


def test_package_with_symlink_inside_is_refused(tmp_path):
    exp = _export_folder(tmp_path / "e")
    secret = tmp_path / "secret"
    secret.write_text("private")
    os.symlink(secret, exp["mlpackage"] / "Data" / "link")
    m = exp["manifest"]
    entry = next(a for a in m["artifacts"] if a["format"] == "mlpackage")
    entry["sha256"] = mf.sha256_file(exp["mlpackage"])  # even with a matching hash
    mf.write_manifest(exp["pte"].parent, m)
    app = tmp_path / "ios_demo"
    app.mkdir()
    with pytest.raises(ArtifactError, match="symlink"):
        bd.bundle_artifacts([exp["mlpackage"]], app="ios", app_dir=app)


def test_new_model_removes_only_files_the_previous_bundle_listed(tmp_path, android_app):
    first = _export_folder(tmp_path / "a", name="v2")
    bd.bundle_artifacts([first["pte"]], app="android", app_dir=android_app)
    assets = android_app / "app" / "src" / "main" / "assets"
    (assets / "user_notes.txt").write_text("not ours")
    second = _export_folder(tmp_path / "b", name="v3-small")
    result = bd.bundle_artifacts([second["pte"]], app="android", app_dir=android_app)
    assert _actions(result)[first["pte"].name] == "removed"
    assert not (assets / first["pte"].name).exists()
    assert (assets / "user_notes.txt").read_text() == "not ours"
    assert mf.read_manifest(assets)["model"]["name"] == "mobilenet_v3_small_100"


def test_interrupted_copy_keeps_the_old_file(tmp_path, android_app, monkeypatch):
    exp = _export_folder(tmp_path / "e")
    bd.bundle_artifacts([exp["pte"]], app="android", app_dir=android_app)
    assets = android_app / "app" / "src" / "main" / "assets"
    before = (assets / exp["pte"].name).read_bytes()
    manifest_before = (assets / "manifest.json").read_text()
    exp2 = _export_folder(tmp_path / "e", payload=b"new")

    def half_copy(src, dst, *a, **k):
        with open(dst, "wb") as fh:
            fh.write(b"half")
        raise OSError(5, "I/O error")

    monkeypatch.setattr(shutil, "copyfile", half_copy)
    with pytest.raises(OSError):
        bd.bundle_artifacts([exp2["pte"]], app="android", app_dir=android_app)
    assert (assets / exp["pte"].name).read_bytes() == before
    assert (assets / "manifest.json").read_text() == manifest_before
    assert sorted(p.name for p in assets.iterdir()) == sorted(
        ["labels.txt", "manifest.json", exp["pte"].name]
    )


def test_artifacts_from_two_folders_are_refused(tmp_path, android_app):
    a = _export_folder(tmp_path / "a")
    b = _export_folder(tmp_path / "b", name="v3-small")
    with pytest.raises(UsageError, match="one model"):
        bd.bundle_artifacts([a["pte"], b["pte"]], app="android", app_dir=android_app)


def test_unknown_manifest_version_is_refused(tmp_path, android_app):
    exp = _export_folder(tmp_path / "e")
    doc = json.loads((exp["pte"].parent / "manifest.json").read_text())
    doc["version"] = 3
    (exp["pte"].parent / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="version 3"):
        bd.bundle_artifacts([exp["pte"]], app="android", app_dir=android_app)


def test_cli_bundle_exit_codes(tmp_path, android_app, cli):
    exp = _export_folder(tmp_path / "e")
    code, out, err = cli("bundle", exp["pte"], "--app", "android", "--app-dir", android_app)
    assert code == 0, err
    assert f"added      {exp['pte'].name}" in out
    code, out, err = cli("bundle", exp["pte"], "--app", "android", "--app-dir", android_app, "--json")
    assert code == 0 and {c["action"] for c in json.loads(out)["changes"]} == {"unchanged"}
    code, out, err = cli("bundle", exp["mlpackage"], "--app", "android", "--app-dir", android_app)
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, out, err = cli("bundle", tmp_path / "missing.pte", "--app", "android", "--app-dir", android_app)
    assert code == 1 and "does not exist" in err


def test_default_app_folders_are_the_repo_demos():
    root, assets = bd.app_assets_dir("android")
    assert root.name == "android_demo" and assets == root / "app" / "src" / "main" / "assets"
    root, assets = bd.app_assets_dir("ios")
    assert root.name == "ios_demo" and assets.parent.name == "MobileNetDemo"


# --- the runtime the app pins vs the executorch that wrote the .pte ----------------------


def _ios_app(folder, pin="branch: swiftpm-1.5.1"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "project.yml").write_text(
        "name: MobileNetDemo\npackages:\n  DemoLogic:\n    path: DemoLogic\n"
        f"  ExecuTorch:\n    url: https://github.com/pytorch/executorch\n    {pin}\n"
    )
    return folder


def test_android_app_pinning_an_older_runtime_is_refused_before_anything_is_written(tmp_path):
    exp = _export_folder(tmp_path / "e")
    exp["manifest"]["versions"]["executorch"] = "1.5.1"
    mf.write_manifest(exp["pte"].parent, exp["manifest"])
    app = _android_app(tmp_path / "android_demo", executorch="1.4.0")
    with pytest.raises(RuntimeVersionError) as err:
        bd.bundle_artifacts([exp["pte"]], app="android", app_dir=app)
    message = str(err.value)
    assert "\n" not in message
    assert f"{exp['pte'].name} was written by executorch 1.5.1 but the android app pins 1.4.0" in message
    assert "libs.versions.toml" in message and "--allow-older-runtime" in message
    assert not (app / "app" / "src" / "main" / "assets").exists()
    logs = []
    result = bd.bundle_artifacts(
        [exp["pte"]], app="android", app_dir=app, allow_older_runtime=True, log=logs.append
    )
    assert _actions(result)[exp["pte"].name] == "added"
    assert any(line.startswith("warning:") and "1.4.0" in line for line in logs)


def test_the_entry_s_own_writer_version_wins_over_the_manifest_s(tmp_path):
    exp = _export_folder(tmp_path / "e")
    m = exp["manifest"]
    m["versions"]["executorch"] = "1.4.0"
    m["artifacts"][0]["runtime"] = {"name": "executorch", "version": "1.6.0", "backends": ["XnnpackBackend"]}
    mf.write_manifest(exp["pte"].parent, m)
    app = _android_app(tmp_path / "android_demo", executorch="1.5.1")
    with pytest.raises(RuntimeVersionError, match="written by executorch 1.6.0"):
        bd.bundle_artifacts([exp["pte"]], app="android", app_dir=app)


def test_ios_app_takes_pte_files_and_reads_its_swiftpm_pin(tmp_path):
    exp = _export_folder(tmp_path / "e")
    exp["manifest"]["versions"]["executorch"] = "1.5.1"
    mf.write_manifest(exp["pte"].parent, exp["manifest"])
    app = _ios_app(tmp_path / "ios_demo")
    assert bd.pinned_executorch("ios", app)[0] == "1.5.1"
    result = bd.bundle_artifacts([exp["pte"], exp["mlpackage"]], app="ios", app_dir=app)
    assert _actions(result)[exp["pte"].name] == "added" and _actions(result)[exp["mlpackage"].name] == "added"
    listed = [a["format"] for a in mf.read_manifest(app / "MobileNetDemo" / "Models")["artifacts"]]
    assert sorted(listed) == ["mlpackage", "pte"]
    old = _ios_app(tmp_path / "ios_old", pin="exactVersion: 1.0.1")
    with pytest.raises(RuntimeVersionError, match="the ios app pins 1.0.1"):
        bd.bundle_artifacts([exp["pte"]], app="ios", app_dir=old)


def test_an_app_without_a_pin_gets_a_warning_not_a_guess(tmp_path):
    exp = _export_folder(tmp_path / "e")
    app = tmp_path / "my_app"
    (app / "app" / "src" / "main").mkdir(parents=True)
    logs = []
    bd.bundle_artifacts([exp["pte"]], app="android", app_dir=app, log=logs.append)
    assert any("no ExecuTorch pin found" in line for line in logs)


def test_the_demo_apps_pin_at_least_the_executorch_that_writes_our_files():
    from importlib import metadata

    from packaging.version import Version

    ours = Version(metadata.version("executorch")).release
    for app in ("android", "ios"):
        root, _ = bd.app_assets_dir(app)
        pinned, where = bd.pinned_executorch(app, root)
        assert pinned is not None, f"{where} does not pin ExecuTorch"
        assert Version(pinned).release >= ours, (
            f"{where} pins {pinned}, older than executorch {'.'.join(map(str, ours))}"
        )


def test_cli_bundle_refusal_is_one_line_exit_1(tmp_path, cli):
    exp = _export_folder(tmp_path / "e")
    exp["manifest"]["versions"]["executorch"] = "1.5.1"
    mf.write_manifest(exp["pte"].parent, exp["manifest"])
    app = _android_app(tmp_path / "android_demo", executorch="1.4.0")
    code, out, err = cli("bundle", exp["pte"], "--app", "android", "--app-dir", app)
    assert code == 1 and out == ""
    assert err.strip().count("\n") == 0 and "pins 1.4.0" in err
