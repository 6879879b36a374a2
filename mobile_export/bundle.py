"""Copy exported artifacts, their labels and manifest into a demo app.

The app reads one manifest.json, so a bundle is one model: the manifest written into the
app lists exactly the artifacts copied there. Every file is checked against its sha256
before it is copied, every destination must stay inside the app folder (no "..", absolute
names, or symlinks leading out), each file lands by one rename, and the manifest is
written last so the app never sees an entry whose file is not whole."""

from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePath
from typing import Callable

from . import manifest as mf
from .errors import ArtifactError, ManifestError, RuntimeVersionError, UsageError
from .fsutil import atomic_path, sha256_file, size_bytes, write_text_atomic

Log = Callable[[str], None]

REPO_ROOT = Path(__file__).resolve().parent.parent

# Where each app expects its models, relative to the app project folder, which artifact
# formats it can run, and the file that pins the ExecuTorch runtime it links. Facts as data:
# the apps' READMEs repeat these paths.
APPS = {
    "android": {
        "project": "android_demo",
        "assets": Path("app/src/main/assets"),
        "formats": ("pte", "bpte"),
        "runtime_pin": Path("gradle/libs.versions.toml"),
        "cannot_run_targets": ("executorch-coreml",),
    },  # a Core ML delegate .pte needs Apple's Core ML
    "ios": {
        "project": "ios_demo",
        "assets": Path("MobileNetDemo/Models"),
        "formats": ("mlpackage", "pte"),
        "runtime_pin": Path("project.yml"),
    },
}
SWIFTPM_BRANCH_PREFIX = "swiftpm-"  # ExecuTorch publishes its Swift package on branches swiftpm-X.Y.Z


def pinned_executorch(app: str, root: Path) -> tuple[str | None, Path]:
    """The ExecuTorch runtime version the app at `root` links, and the file that says so.

    Android: `executorch` in the Gradle version catalog. iOS: the ExecuTorch package in the
    XcodeGen spec, as `exactVersion`/`version` or a `swiftpm-X.Y.Z` branch. None when the app
    does not pin ExecuTorch (an iOS app that only runs .mlpackage files)."""
    pin_file = root / APPS[app]["runtime_pin"]
    if not pin_file.is_file():
        return None, pin_file
    text = pin_file.read_text(encoding="utf-8")
    try:
        if app == "android":
            import tomllib

            version = tomllib.loads(text).get("versions", {}).get("executorch")
        else:
            import yaml

            package = ((yaml.safe_load(text) or {}).get("packages") or {}).get("ExecuTorch") or {}
            version = package.get("exactVersion") or package.get("version") or package.get("branch")
            if isinstance(version, str) and version.startswith(SWIFTPM_BRANCH_PREFIX):
                version = version[len(SWIFTPM_BRANCH_PREFIX) :]
    except Exception as exc:  # tomllib/yaml errors: the app's own file is malformed
        raise ManifestError(
            f"{pin_file}: cannot read the ExecuTorch pin ({exc.__class__.__name__}); fix the file"
        ) from None
    return (str(version) if version is not None else None), pin_file


def writer_version(manifest: dict, entry: dict) -> str | None:
    """The executorch version that wrote a .pte: the entry's own record, else the manifest's."""
    runtime = entry.get("runtime") or {}
    return runtime.get("version") or (manifest.get("versions") or {}).get("executorch")


def check_runtime_pin(
    app: str, root: Path, manifest: dict, chosen: list[tuple[Path, dict]], allow_older_runtime: bool, log: Log
) -> None:
    """Refuse a .pte whose writer is newer than the runtime the app links: ExecuTorch promises
    backward compatibility only (runtime/COMPATIBILITY.md), so such a file may fail to load."""
    from packaging.version import InvalidVersion, Version

    ptes = [(p, e) for p, e in chosen if e["format"] in ("pte", "bpte")]
    if not ptes:
        return
    pinned, pin_file = pinned_executorch(app, root)
    if pinned is None:  # a user's own app laid out otherwise: say what to check, do not guess
        needed = max((writer_version(manifest, e) or "?" for _, e in ptes), key=str)
        log(
            f"warning: no ExecuTorch pin found in {pin_file}; make sure the app links ExecuTorch {needed} or newer"
        )
        return
    for p, entry in ptes:
        written = writer_version(manifest, entry)
        try:
            older = written is not None and Version(pinned).release < Version(written).release
        except InvalidVersion:
            raise RuntimeVersionError(
                f"cannot compare ExecuTorch versions {pinned!r} ({pin_file.name}) and "
                f"{written!r} ({p.name}); fix the pin"
            ) from None
        if older:
            message = (
                f"{p.name} was written by executorch {written} but the {app} app pins {pinned} "
                f"({pin_file.name}); raise the pin to {written} or pass --allow-older-runtime"
            )
            if not allow_older_runtime:
                raise RuntimeVersionError(message)
            log(f"warning: {message.split(';')[0]}; bundling anyway (--allow-older-runtime)")


def app_assets_dir(app: str, app_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(app project folder, folder inside it that receives the models)."""
    if app not in APPS:
        raise UsageError(f"unknown app {app!r}; choose one of: {', '.join(APPS)}")
    root = Path(app_dir) if app_dir is not None else REPO_ROOT / APPS[app]["project"]
    if not root.is_dir():
        raise UsageError(
            f"app folder {str(root)!r} does not exist; pass --app-dir pointing to the {APPS[app]['project']} project"
        )
    return root.resolve(), root.resolve() / APPS[app]["assets"]


def _safe_name(name: object, what: str) -> str:
    """A plain file name: no folders, no "..", not absolute. Manifests are input too."""
    if not isinstance(name, str) or not name or name in (".", "..") or "\0" in name:
        raise ManifestError(f"{what} has an invalid file name {name!r}; re-export to regenerate the manifest")
    pure = PurePath(name)
    if "/" in name or "\\" in name or pure.is_absolute() or len(pure.parts) != 1 or name.startswith("~"):
        raise ManifestError(
            f"{what} names {name!r}, which is not a plain file name and could land outside the app; re-export to regenerate the manifest"
        )
    return name


def _inside(path: Path, root: Path, what: str) -> Path:
    """Refuse a destination that resolves (through symlinks or "..") outside `root`."""
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise UsageError(
            f"{what} {str(path)!r} resolves to {str(resolved)!r}, outside the app folder {str(root)!r}; remove the symlink or choose another --app-dir"
        )
    if path.is_symlink():
        raise UsageError(
            f"{what} {str(path)!r} is a symlink; remove it so the bundle writes a real file inside the app"
        )
    return path


def _check_no_symlinks(src: Path) -> None:
    """A package directory must not carry links: copying them would pull outside files in."""
    if src.is_symlink():
        raise ArtifactError(f"{src.name} is a symlink; bundle the real file (export again or copy it)")
    if src.is_dir():
        for p in src.rglob("*"):
            if p.is_symlink():
                raise ArtifactError(
                    f"{src.name} contains a symlink ({p.relative_to(src)}); export it again so the package holds only real files"
                )


def _copy(src: Path, dest: Path) -> None:
    with atomic_path(dest, force=True) as tmp:
        if src.is_dir():
            shutil.copytree(src, tmp, symlinks=True)
        else:
            shutil.copyfile(src, tmp)


def _place(src: Path, dest: Path, sha256: str, changes: list, kind: str) -> None:
    """Copy `src` over `dest` unless it already holds the same bytes; record what happened."""
    new_bytes = size_bytes(src)
    if dest.exists() and not dest.is_symlink():
        old_bytes = size_bytes(dest)
        if sha256_file(dest) == sha256:
            changes.append({"file": dest.name, "kind": kind, "action": "unchanged", "bytes": new_bytes})
            return
        _copy(src, dest)
        changes.append(
            {
                "file": dest.name,
                "kind": kind,
                "action": "replaced",
                "bytes": new_bytes,
                "old_bytes": old_bytes,
            }
        )
        return
    _copy(src, dest)
    changes.append({"file": dest.name, "kind": kind, "action": "added", "bytes": new_bytes})


def _group_by_manifest(paths: list[Path]) -> tuple[Path, dict, list[tuple[Path, dict]]]:
    folders = {p.resolve().parent for p in paths}
    if len(folders) != 1:
        raise UsageError(
            f"the artifacts come from {len(folders)} export folders; the app reads one manifest, so bundle one model's folder at a time"
        )
    pairs = []
    manifest = None
    for p in paths:
        if not p.exists():
            raise ArtifactError(f"{str(p)!r} does not exist; export it first or check the path")
        manifest, entry = mf.manifest_for(p)
        pairs.append((p, entry))
    return folders.pop(), manifest, pairs


def _previous_files(assets: Path) -> set[str]:
    """Files the app's current manifest lists (only those may be removed as stale)."""
    path = assets / mf.FILENAME
    if not path.is_file():
        return set()
    try:
        old = mf.read_manifest(path)
    except ManifestError:
        return set()
    names = {a.get("file") for a in old.get("artifacts", [])}
    if old.get("labels"):
        names.add(old["labels"].get("file"))
    out = set()
    for n in names:
        try:
            out.add(_safe_name(n, "the app's previous manifest"))
        except ManifestError:
            continue
    return out


def bundle_artifacts(
    paths,
    app: str,
    app_dir: str | Path | None = None,
    allow_older_runtime: bool = False,
    log: Log = lambda _msg: None,
) -> dict:
    """Copy `paths` (artifacts of one export folder) with labels and manifest into `app`.

    Returns {"app", "app_dir", "destination", "changes": [{file, kind, action, bytes, ...}]};
    action is added, replaced, unchanged, removed (a file the previous bundle listed) or
    skipped (an artifact the app cannot run, e.g. a .mlpackage for Android)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise UsageError("nothing to bundle; pass one or more exported artifacts (.pte, .bpte, .mlpackage)")
    root, assets = app_assets_dir(app, app_dir)
    formats = APPS[app]["formats"]
    src_dir, manifest, pairs = _group_by_manifest(paths)

    changes: list[dict] = []
    chosen: list[tuple[Path, dict]] = []
    for p, entry in pairs:
        if entry["format"] not in formats or entry.get("target") in APPS[app].get("cannot_run_targets", ()):
            changes.append({"file": p.name, "kind": "artifact", "action": "skipped", "bytes": entry["bytes"]})
            continue
        if any(c[1]["file"] == entry["file"] for c in chosen):
            continue
        chosen.append((p, entry))
    if not chosen:
        raise UsageError(
            f"none of the artifacts can run in the {app} app (it takes {', '.join('.' + f for f in formats)}); "
            f"export with --target {'executorch' if app == 'android' else 'coreml'} or use --app {'ios' if app == 'android' else 'android'}"
        )

    for c in changes:
        log(f"skipping {c['file']}: the {app} app runs {', '.join('.' + f for f in formats)} files")

    # Check everything before writing anything: runtime pin, names, hashes, where each file would land.
    check_runtime_pin(app, root, manifest, chosen, allow_older_runtime, log)
    for p, entry in chosen:
        _safe_name(entry["file"], f"artifact entry of {p.name}")
        _check_no_symlinks(p)
        mf.check_sha256(p, entry)
    labels = manifest.get("labels")
    labels_src = None
    if labels:
        name = _safe_name(labels["file"], "the manifest's labels entry")
        labels_src = src_dir / name
        if labels_src.is_symlink() or not labels_src.is_file():
            raise ArtifactError(
                f"labels file {str(labels_src)!r} is missing; export again so it sits beside the manifest"
            )
        if sha256_file(labels_src) != labels["sha256"]:
            raise ArtifactError(
                f"{name}: sha256 does not match the manifest; the labels were changed, export again"
            )

    for part in [*reversed(assets.relative_to(root).parents), assets.relative_to(root)]:
        if part != Path(".") and ((root / part).exists() or (root / part).is_symlink()):
            _inside(root / part, root, "app folder part")
    assets.mkdir(parents=True, exist_ok=True)
    _inside(assets, root, "model folder")
    for _path, entry in chosen:
        _inside(assets / entry["file"], root, "destination")
    if labels_src is not None:
        _inside(assets / labels_src.name, root, "destination")
    _inside(assets / mf.FILENAME, root, "destination")

    previous = _previous_files(assets)
    for p, entry in chosen:
        _place(p, assets / entry["file"], entry["sha256"], changes, "artifact")
        log(f"{changes[-1]['action']} {entry['file']}")
    if labels_src is not None:
        _place(labels_src, assets / labels_src.name, labels["sha256"], changes, "labels")

    app_manifest = dict(manifest, artifacts=[entry for _, entry in chosen])
    mf.validate(app_manifest, "bundled manifest")
    text = json.dumps(app_manifest, indent=2) + "\n"
    dest_manifest = assets / mf.FILENAME
    old_text = (
        dest_manifest.read_text(encoding="utf-8", errors="replace") if dest_manifest.is_file() else None
    )
    if old_text != text:
        write_text_atomic(dest_manifest, text)
    record = {"file": mf.FILENAME, "kind": "manifest", "bytes": len(text.encode())}
    if old_text is None:
        record["action"] = "added"
    elif old_text == text:
        record["action"] = "unchanged"
    else:
        record.update(action="replaced", old_bytes=len(old_text.encode()))
    changes.append(record)

    keep = (
        {e["file"] for _, e in chosen}
        | ({labels_src.name} if labels_src is not None else set())
        | {mf.FILENAME}
    )
    for stale in sorted(previous - keep):
        target = assets / stale
        if target.is_symlink() or not target.exists():
            continue
        old_bytes = size_bytes(target)
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        changes.append(
            {"file": stale, "kind": "stale", "action": "removed", "bytes": 0, "old_bytes": old_bytes}
        )
        log(f"removed {stale} (listed by the previous bundle)")
    return {
        "app": app,
        "app_dir": str(root),
        "destination": str(assets),
        "model": manifest["model"]["name"],
        "changes": changes,
    }


def format_changes(result: dict) -> str:
    """One line per file, then where they went."""
    lines = []
    for c in result["changes"]:
        size = f"{c['bytes']:,} bytes"
        if c["action"] == "replaced":
            size = f"{c['old_bytes']:,} -> {c['bytes']:,} bytes"
        elif c["action"] == "removed":
            size = f"{c['old_bytes']:,} bytes"
        lines.append(f"{c['action']:<10} {c['file']}  {size}")
    lines.append(f"{result['model']} bundled into {result['destination']}")
    return "\n".join(lines)
