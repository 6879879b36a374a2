"""The apps' platform-free logic (android_demo/core, plain Java) compiled and unit-tested on
the JVM against golden vectors this package makes from real photos at test time: the same
image must give the same input tensor within 1e-6 and the same top 5. A real .bpte written by
executorch checks the on-device self-check's reader. Mutated vectors prove the tests can fail."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mobile_export import golden
from mobile_export.models.registry import Preprocess
from mobile_export.preprocess import normalize, resize_crop

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "android_demo" / "core" / "src"
COMMITTED = ROOT / "ios_demo" / "DemoLogic" / "Tests" / "DemoLogicTests" / "Golden"
JARS = [Path("/usr/share/java/junit4.jar"), Path("/usr/share/java/hamcrest-core.jar")]
CLASSES = [
    "org.mobileexport.demo.core.GoldenCasesTest",
    "org.mobileexport.demo.core.ContractTest",
    "org.mobileexport.demo.core.BundledProgramTest",
]
TESTS_PER_CASE = 5  # @Test methods in GoldenCasesTest


@pytest.fixture(scope="session")
def jvm(tmp_path_factory):
    """Compile the core (Java 8 language level, as Android builds it) and its JUnit tests once."""
    javac, java = shutil.which("javac"), shutil.which("java")
    if not javac or not java:
        pytest.skip(
            "javac/java not installed: the JVM tests of android_demo/core need a JDK (apt-get install default-jdk)"
        )
    missing = [str(j) for j in JARS if not j.is_file()]
    if missing:
        pytest.skip(f"JUnit 4 not installed ({', '.join(missing)}): apt-get install junit4")
    out = tmp_path_factory.mktemp("jvm_classes")
    main_src = sorted(str(p) for p in (CORE / "main" / "java").rglob("*.java"))
    test_src = sorted(str(p) for p in (CORE / "test" / "java").rglob("*.java"))
    cp = ":".join([str(out), *map(str, JARS)])
    for args in (
        ["--release", "8", "-Xlint:all", "-Xlint:-options", "-Werror", "-d", str(out), *main_src],
        ["-cp", cp, "-d", str(out), *test_src],
    ):
        done = subprocess.run([javac, *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"javac failed:\n{done.stdout}\n{done.stderr}"

    def run(golden_dir: Path, classes=CLASSES, props: dict | None = None):
        flags = [f"-D{k}={v}" for k, v in {"golden.dir": golden_dir, **(props or {})}.items()]
        return subprocess.run(
            [java, *flags, "-cp", cp, "org.junit.runner.JUnitCore", *classes],
            capture_output=True,
            text=True,
            timeout=300,
        )

    return run


@pytest.fixture(scope="session")
def golden_dir(tmp_path_factory):
    return golden.write_golden(tmp_path_factory.mktemp("golden") / "golden")


@pytest.fixture(scope="session")
def bpte_dir(tmp_path_factory):
    """A real bundled program from executorch's own Python API, and what it must contain."""
    import hashlib

    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.core import BundledProgram
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer
    from executorch.exir import to_edge_transform_and_lower

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2),
        torch.nn.ReLU6(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    ).eval()
    example = (torch.rand(1, 3, 16, 16),)
    manager = to_edge_transform_and_lower(
        torch.export.export(model, example), partitioner=[XnnpackPartitioner()]
    ).to_executorch()
    inputs = [torch.rand(1, 3, 16, 16) for _ in range(3)]
    with torch.no_grad():
        cases = [MethodTestCase(inputs=[x], expected_outputs=[model(x)]) for x in inputs]
    data = serialize_from_bundled_program_to_flatbuffer(
        BundledProgram(manager, [MethodTestSuite("forward", cases)])
    )
    out = tmp_path_factory.mktemp("bpte")
    (out / "model.bpte").write_bytes(data)
    f32 = lambda t: base64.b64encode(t.detach().numpy().astype("<f4").tobytes()).decode()  # noqa: E731
    with torch.no_grad():
        expect = {
            "program_sha256": hashlib.sha256(manager.buffer).hexdigest(),
            "cases": [
                {
                    "input_shape": list(x.shape),
                    "input": f32(x),
                    "output_shape": list(model(x).shape),
                    "output": f32(model(x)),
                }
                for x in inputs
            ],
        }
    (out / "expect.json").write_text(json.dumps(expect))
    return out


def _summary(done) -> tuple[int, int]:
    """(tests run, failures) from JUnitCore's last lines; raises if it printed neither."""
    ok = re.search(r"^OK \((\d+) tests?\)", done.stdout, re.M)
    if ok:
        return int(ok.group(1)), 0
    bad = re.search(r"^Tests run: (\d+),\s+Failures: (\d+)", done.stdout, re.M)
    assert bad, f"no JUnit summary:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return int(bad.group(1)), int(bad.group(2))


def test_java_core_reproduces_python_on_real_photos(jvm, golden_dir):
    index = json.loads((golden_dir / "index.json").read_text())
    names = index["cases"]
    assert {"camera_gray", "logo_rgba", "chelsea_exif6", "coffee_big_draft"} <= set(names)
    done = jvm(golden_dir, classes=CLASSES[:2])
    run, failed = _summary(done)
    assert failed == 0 and done.returncode == 0, done.stdout[-6000:]
    assert run == TESTS_PER_CASE * len(names) + 12  # + the @Test methods of ContractTest
    # Every case reported its tensor error, and each is within the contract's 1e-6.
    errors = {
        m.group(1): (float(m.group(2)), float(m.group(3)))
        for m in re.finditer(r"GOLDEN (\S+) unit_max_abs=(\S+) normalized_max_abs=(\S+)$", done.stdout, re.M)
    }
    assert set(errors) == set(names)
    assert max(max(e) for e in errors.values()) <= 1e-6
    print(
        f"Java vs Python input tensors over {len(errors)} photos, max abs difference: {max(max(e) for e in errors.values()):.3e}"
    )
    top5_checked = set(re.findall(r"GOLDEN (\S+) top5_ok", done.stdout))
    with_logits = {n for n in names if json.loads((golden_dir / "cases" / f"{n}.json").read_text())["top5"]}
    assert top5_checked == with_logits and len(with_logits) >= 8


def test_bundled_program_reader_reads_what_executorch_wrote(jvm, golden_dir, bpte_dir):
    done = jvm(golden_dir, classes=CLASSES[2:], props={"bpte.dir": bpte_dir})
    assert _summary(done) == (1, 0) and done.returncode == 0, done.stdout[-4000:]
    assert re.search(r"BPTE program_bytes=\d+ cases=3$", done.stdout, re.M), done.stdout


def _mutate(golden_dir: Path, dest: Path) -> dict[str, str]:
    """A golden folder whose cases are each wrong in one way; returns case -> what is wrong."""
    shutil.copytree(golden_dir, dest)
    index = json.loads((dest / "index.json").read_text())
    base = json.loads((dest / "cases" / "chelsea_torchvision.json").read_text())
    wrong = {}

    unit = np.frombuffer(base64.b64decode(base["unit"]), "<f4").copy()
    unit[1234] += 2e-6  # just over the tolerance
    wrong["bad_tensor"] = dict(base, unit=base64.b64encode(unit.tobytes()).decode())
    tiny = json.loads((dest / "cases" / "exif6_tiny.json").read_text())
    tiny["image"]["orientation"] = 8  # rotated the wrong way round
    wrong["bad_orientation"] = tiny
    swapped = dict(base, top5=[base["top5"][1], base["top5"][0], *base["top5"][2:]])
    wrong["bad_top5"] = swapped
    for name, case in wrong.items():
        (dest / "cases" / f"{name}.json").write_text(json.dumps(dict(case, name=name)))
    index["cases"] = list(wrong)
    (dest / "index.json").write_text(json.dumps(index))
    return {
        "bad_tensor": "inputTensorMatchesPython",
        "bad_orientation": "decodedPixelsStandUprightAndOpaque",
        "bad_top5": "top5MatchesPython",
    }


def test_java_tests_fail_on_wrong_vectors(jvm, golden_dir, tmp_path):
    expected = _mutate(golden_dir, tmp_path / "mutated")
    done = jvm(tmp_path / "mutated", classes=CLASSES[:1])
    run, failed = _summary(done)
    assert done.returncode != 0
    failures = set(re.findall(r"^\d+\) (\w+)\[(\w+)\]", done.stdout, re.M))
    for case, method in expected.items():
        assert (method, case) in failures, done.stdout[-4000:]


def test_committed_copy_passes_and_matches_todays_python(jvm):
    """The small copy the XCTest (and `gradle :core:test`) read: the Java core passes it, and
    the Python side still computes the same tensors from its stored pixels."""
    from PIL import Image, ImageOps

    index = json.loads((COMMITTED / "index.json").read_text())
    assert index["format"] == golden.FORMAT and len(index["cases"]) >= 10
    size = sum(p.stat().st_size for p in COMMITTED.rglob("*") if p.is_file())
    assert size < 600_000, f"committed golden copy grew to {size} bytes; keep it small"
    done = jvm(COMMITTED, classes=CLASSES[:2])
    assert _summary(done)[1] == 0 and done.returncode == 0, done.stdout[-4000:]

    for name in index["cases"]:
        case = json.loads((COMMITTED / "cases" / f"{name}.json").read_text())
        img = case["image"]
        raw = np.frombuffer(base64.b64decode(img["data"]), np.uint8)
        mode, shape = {
            "gray": ("L", (img["height"], img["width"])),
            "rgba": ("RGBA", (img["height"], img["width"], 4)),
            "rgb": ("RGB", (img["height"], img["width"], 3)),
        }[img["kind"]]
        im = Image.fromarray(raw.reshape(shape), mode)
        exif = Image.Exif()
        exif[golden.ORIENTATION_TAG] = img["orientation"]
        im.info["exif"] = exif.tobytes()
        im = ImageOps.exif_transpose(im)
        if im.mode == "RGBA":
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
        rgb = np.asarray(im.convert("RGB"))
        p = case["preprocess"]
        pre = Preprocess(p["crop"], p["resize"], p["interpolation"], tuple(p["mean"]), tuple(p["std"]))
        unit = resize_crop(rgb, pre)
        stored = np.frombuffer(base64.b64decode(case["unit"]), "<f4").reshape(unit.shape)
        assert np.abs(unit - stored).max() <= 1e-6, (
            f"{name}: committed vectors are stale; run python -m mobile_export.golden {COMMITTED} --small"
        )
        stored_n = np.frombuffer(base64.b64decode(case["normalized"]), "<f4").reshape(unit.shape)
        assert np.abs(normalize(unit, pre) - stored_n).max() <= 1e-6


@pytest.mark.slow
def test_app_core_reads_a_real_bundled_export(jvm, tmp_path):
    """export --bundled -> bundle --app android -> the app's Java reads the assets folder: the
    manifest, the .pte's sha256, the .bpte; and its preprocessing of the photos the exporter
    embedded equals the .bpte's inputs within 1e-6. (Lowering takes about a minute here.)"""
    from mobile_export.bundle import bundle_artifacts
    from mobile_export.pipeline import ExportRequest, run_export
    from mobile_export.preprocess import bundled_photos
    from mobile_export.targets import ExportOptions

    out = tmp_path / "export"
    manifest = run_export(
        ExportRequest(
            model="v3-small",
            target="executorch",
            out=out,
            weights="random",
            resolution=64,
            verify=False,
            options=ExportOptions(bundled=True),
        )
    )
    files = [out / a["file"] for a in manifest["artifacts"]]
    assert sorted(p.suffix for p in files) == [".bpte", ".pte"]
    app = tmp_path / "android_demo"
    (app / "app" / "src" / "main").mkdir(parents=True)
    bundle_artifacts(files, app="android", app_dir=app)
    bpte = next(a for a in manifest["artifacts"] if a["format"] == "bpte")
    names = bpte["export"]["bundled"]["images"]
    photos = {p.name: p for p in bundled_photos()}
    p = manifest["preprocess"]
    pre = Preprocess(p["crop"], p["resize"], p["interpolation"], tuple(p["mean"]), tuple(p["std"]))
    golden.write_photo_cases(tmp_path / "photos", [photos[n] for n in names], pre)
    done = jvm(
        COMMITTED,
        classes=["org.mobileexport.demo.core.AppBundleTest"],
        props={"app.assets": app / "app" / "src" / "main" / "assets", "app.photos": tmp_path / "photos"},
    )
    assert _summary(done) == (1, 0) and done.returncode == 0, done.stdout[-4000:]
    errors = [float(e) for e in re.findall(r"bpte_input_max_abs=(\S+)", done.stdout)]
    assert len(errors) == len(names) and max(errors) <= 1e-6
    print(f"app preprocessing vs .bpte inputs, max abs difference: {max(errors):.3e}")
