"""Labelled image sets on disk -> a fixed, ordered list of (image path, class index).

Three layouts, recognised in this order:
  (c) ImageNet validation as distributed: flat ILSVRC2012_val_*.JPEG plus one ground-truth file
      - `val.txt` / `val_labels.txt` ("FILE INDEX" per line, INDEX 0..999 in sorted-WNID order:
        the order torchvision, timm and our mobile_export/data/imagenet_labels.txt use);
      - `LOC_val_solution.csv` (Kaggle: ImageId,PredictionString whose first token is a WNID)
        with `LOC_synset_mapping.txt` beside it (WNIDs in sorted order, the index order);
      - `ILSVRC2012_validation_ground_truth.txt` (devkit: one ILSVRC2012_ID 1..1000 per line, in
        the DEVKIT's synset order, which is not the sorted-WNID order) with the devkit's
        `meta.mat` beside it (or in data/), which maps each ID to its WNID; the sorted WNIDs
        then give the index. Without meta.mat the IDs cannot be mapped honestly: we refuse.
      ImageNet indices are only meaningful for a 1000-class model.
  (b) a flat folder plus a CSV `file,label` (`labels.csv`, or the only *.csv), label as a
      class name of the manifest or a 0-based index; a header row is optional.
  (a) class-per-folder (torchvision ImageFolder): each subfolder name is a class name of the
      manifest (exact, else case/space/underscore-insensitive) or, without labels, an index.

Only paths are listed (memory grows with the count of names, never with pixels)."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError, UsageError
from ..preprocess import IMAGE_SUFFIXES

IMAGENET_CLASSES = 1000
VAL_TXT_NAMES = ("val.txt", "val_labels.txt", "ILSVRC2012_val_labels.txt")
DEVKIT_GT = "ILSVRC2012_validation_ground_truth.txt"
KAGGLE_GT = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
IMAGENET_VAL = re.compile(r"^ILSVRC2012_val_(\d{8})\.(jpe?g|JPE?G|png|PNG)$")
WNID = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class Item:
    path: Path
    label: int
    name: str  # path relative to the dataset root: what reports print


@dataclass
class Dataset:
    root: Path
    layout: str  # "imagefolder" | "csv" | "imagenet-val"
    ground_truth: str | None  # the file the labels came from
    items: list[Item]
    total: int  # labelled images before --every/--limit


def load_dataset(
    root: str | Path, labels: list[str] | None, num_classes: int, every: int = 1, limit: int | None = None
) -> Dataset:
    """The labelled images of `root` in a fixed order (sorted by relative path), every
    `every`-th one, at most `limit`. `labels`: the manifest's class names (or None)."""
    root = Path(root)
    if not root.exists():
        raise ImageError(f"dataset folder {str(root)!r} does not exist; pass --dataset DIR")
    if not root.is_dir():
        raise ImageError(
            f"{str(root)!r} is not a folder; pass --dataset DIR (class folders, a CSV, or ImageNet val)"
        )
    if every < 1 or (limit is not None and limit < 1):
        raise UsageError("--every and --limit must be at least 1")
    gt = _imagenet_ground_truth(root)
    if gt is not None:
        layout, (items, source) = "imagenet-val", _imagenet(root, gt, num_classes)
    elif _csv_file(root) is not None:
        layout, (items, source) = "csv", _csv(root, _csv_file(root), labels, num_classes)
    elif any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        layout, (items, source) = "imagefolder", _imagefolder(root, labels, num_classes)
    else:
        raise ImageError(
            f"{str(root)!r} has no class folders, no labels.csv and no ImageNet ground-truth file; "
            "see `mobile-export eval --help` for the three layouts"
        )
    items.sort(key=lambda it: it.name)
    if not items:
        raise ImageError(
            f"no labelled images (jpg/png/webp/bmp) in {str(root)!r}; add some or point to another folder"
        )
    chosen = items[::every]
    if limit is not None:
        chosen = chosen[:limit]
    return Dataset(root, layout, source, chosen, len(items))


# --- (a) class-per-folder ---------------------------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def class_index(name: str, labels: list[str] | None, num_classes: int) -> int | None:
    """A class name or a 0-based index -> index; None when it matches nothing."""
    if labels:
        if name in labels:
            return labels.index(name)
        folded = [_norm(lb) for lb in labels]
        if _norm(name) in folded:
            return folded.index(_norm(name))
    if re.fullmatch(r"\d+", name.strip()) and int(name) < num_classes:
        return int(name)
    return None


def _unmatched_error(names: list[str], labels: list[str] | None, what: str) -> UsageError:
    shown = ", ".join(repr(n) for n in sorted(names)[:10]) + (
        f" (+{len(names) - 10} more)" if len(names) > 10 else ""
    )
    known = (
        f"the model's labels are e.g. {', '.join(repr(x) for x in labels[:5])}"
        if labels
        else "the manifest has no labels, so use 0-based class indices"
    )
    return UsageError(f"{len(names)} {what} match no class of the model: {shown}; {known}")


def _imagefolder(root: Path, labels, num_classes) -> tuple[list[Item], str | None]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    index = {f.name: class_index(f.name, labels, num_classes) for f in folders}
    unmatched = [n for n, i in index.items() if i is None]
    if unmatched:
        raise _unmatched_error(unmatched, labels, "class folder name(s)")
    items = [
        Item(p, index[f.name], p.relative_to(root).as_posix())
        for f in folders
        for p in f.rglob("*")
        if _is_image(p)
    ]
    return items, None


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")


# --- (b) flat folder + CSV --------------------------------------------------------------


def _csv_file(root: Path) -> Path | None:
    if (root / "labels.csv").is_file():
        return root / "labels.csv"
    found = [p for p in root.glob("*.csv") if p.is_file()]
    return found[0] if len(found) == 1 else None


def _csv(root: Path, path: Path, labels, num_classes) -> tuple[list[Item], str]:
    items, unmatched, missing = [], set(), []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for n, row in enumerate(csv.reader(fh)):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2:
                raise UsageError(f"{path.name} line {n + 1}: expected `file,label`, got {','.join(row)!r}")
            file, label = row[0].strip(), row[1].strip()
            if n == 0 and file.lower() in ("file", "filename", "image", "path"):
                continue  # header
            index = class_index(label, labels, num_classes)
            if index is None:
                unmatched.add(label)
                continue
            p = root / file
            if not p.is_file():
                missing.append(file)
                continue
            items.append(Item(p, index, Path(file).as_posix()))
    if unmatched:
        raise _unmatched_error(sorted(unmatched), labels, f"label(s) in {path.name}")
    if missing:
        raise ImageError(
            f"{len(missing)} file(s) listed in {path.name} are not in {str(root)!r}, e.g. {missing[0]!r}; "
            "fix the CSV or add the files"
        )
    return items, path.name


# --- (c) ImageNet validation ------------------------------------------------------------


def _imagenet_ground_truth(root: Path) -> Path | None:
    """The ground-truth file in the folder itself, else in data/, else one level up (nearest wins)."""
    if not any(IMAGENET_VAL.match(p.name) for p in root.iterdir()):
        return None
    for folder in (root, root / "data", root.parent):
        for name in (*VAL_TXT_NAMES, KAGGLE_GT, DEVKIT_GT):
            if (folder / name).is_file():
                return folder / name
    return None


def _imagenet(root: Path, gt: Path, num_classes: int) -> tuple[list[Item], str]:
    if num_classes != IMAGENET_CLASSES:
        raise UsageError(
            f"{gt.name} labels the 1000 ImageNet classes but the model has {num_classes}; "
            "use class folders or a labels.csv for a fine-tuned model"
        )
    files = {m.group(1): p for p in root.iterdir() if (m := IMAGENET_VAL.match(p.name))}
    if gt.name == DEVKIT_GT:
        by_number = _devkit_labels(gt)
    elif gt.name == KAGGLE_GT:
        by_number = _kaggle_labels(gt)
    else:
        by_number = _val_txt_labels(gt)
    items = [Item(p, by_number[num], p.name) for num, p in files.items() if num in by_number]
    unlabelled = len(files) - len(items)
    if unlabelled and not items:
        raise ImageError(
            f"none of the {len(files)} ILSVRC2012_val images is listed in {gt.name}; check the ground-truth file"
        )
    return items, gt.name


def _val_txt_labels(gt: Path) -> dict[str, int]:
    out = {}
    for n, line in enumerate(gt.read_text(encoding="utf-8").splitlines()):
        parts = line.split()
        if not parts:
            continue
        m = IMAGENET_VAL.match(Path(parts[0]).name)
        if len(parts) != 2 or not m or not parts[1].isdigit() or int(parts[1]) >= IMAGENET_CLASSES:
            raise UsageError(
                f"{gt.name} line {n + 1}: expected `ILSVRC2012_val_NNNNNNNN.JPEG INDEX` with INDEX 0..999"
            )
        out[m.group(1)] = int(parts[1])
    return out


def _kaggle_labels(gt: Path) -> dict[str, int]:
    mapping = next(
        (p for p in (gt.parent / KAGGLE_SYNSETS, gt.parent.parent / KAGGLE_SYNSETS) if p.is_file()), None
    )
    if mapping is None:
        raise UsageError(
            f"{gt.name} names classes by WNID; put {KAGGLE_SYNSETS} (from the same Kaggle download) beside it"
        )
    wnids = [line.split()[0] for line in mapping.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(wnids) != IMAGENET_CLASSES or wnids != sorted(wnids):
        raise UsageError(
            f"{mapping.name} should list the 1000 WNIDs in sorted order; it has {len(wnids)} lines"
        )
    index = {w: i for i, w in enumerate(wnids)}
    out = {}
    with open(gt, newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if not row or row[0] == "ImageId":
                continue
            m = re.match(r"^ILSVRC2012_val_(\d{8})$", row[0].strip())
            wnid = row[1].split()[0] if len(row) > 1 and row[1].split() else ""
            if not m or wnid not in index:
                raise UsageError(
                    f"{gt.name}: cannot read the row {','.join(row)[:80]!r}; expected ImageId,WNID ..."
                )
            out[m.group(1)] = index[wnid]
    return out


def devkit_id_to_index(meta_mat: Path) -> dict[int, int]:
    """ILSVRC2012_ID (1..1000, devkit order) -> index in sorted-WNID order, from the devkit's
    meta.mat (the leaf synsets: num_children == 0), as torchvision's ImageNet does."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise UsageError(f"reading {meta_mat.name} needs scipy; `pip install scipy`") from None
    try:
        synsets = loadmat(str(meta_mat), squeeze_me=True)["synsets"]
        leaves = [(int(s["ILSVRC2012_ID"]), str(s["WNID"])) for s in synsets if int(s["num_children"]) == 0]
    except Exception as exc:  # scipy raises many types for a damaged file
        raise UsageError(
            f"{meta_mat}: not the ImageNet devkit's meta.mat ({exc.__class__.__name__})"
        ) from None
    if len(leaves) != IMAGENET_CLASSES or not all(WNID.match(w) for _, w in leaves):
        raise UsageError(f"{meta_mat}: expected 1000 leaf synsets with WNIDs, found {len(leaves)}")
    order = {w: i for i, w in enumerate(sorted(w for _, w in leaves))}
    return {ilsvrc_id: order[w] for ilsvrc_id, w in leaves}


def _devkit_labels(gt: Path) -> dict[str, int]:
    candidates = [
        gt.parent / "meta.mat",
        gt.parent / "data" / "meta.mat",
        gt.parent.parent / "data" / "meta.mat",
    ]
    meta = next((p for p in candidates if p.is_file()), None)
    if meta is None:
        raise UsageError(
            f"{gt.name} uses the devkit's class IDs, whose order differs from the model's; put the devkit's "
            "data/meta.mat beside it (or use a val.txt with sorted-WNID indices)"
        )
    mapping = devkit_id_to_index(meta)
    out = {}
    for n, line in enumerate(gt.read_text(encoding="utf-8").split()):
        if not line.isdigit() or int(line) not in mapping:
            raise UsageError(f"{gt.name} entry {n + 1}: {line!r} is not an ILSVRC2012_ID 1..1000")
        out[f"{n + 1:08d}"] = mapping[int(line)]
    return out
