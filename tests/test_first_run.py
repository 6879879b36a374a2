"""What a newcomer sees: the README's main command prints only our lines, its parity check
runs on weights whose outputs depend on the image, and `--weights example` shows real labels."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MAIN_COMMAND = [
    "v2",
    "--target",
    "all",
    "--weights",
    "random",
]  # README: `mobile-export v2 --target all --weights random`

# Every line the main command may print on stderr (pipeline, targets, verify).
OUR_LINES = [
    r"built mobilenet_v2_100 \(random weights, 224px\) in [\d.]+s",
    r"exporting mobilenet_v2_100_fp32\.pte \.\.\.",
    r"lowered to XNNPACK in [\d.]+s: \d+ op\(s\) delegated in 1 subgraph\(s\), 0 outside",
    r"wrote \S+/mobilenet_v2_100_fp32\.pte \(\d+\) in [\d.]+s",
    r"exporting mobilenet_v2_100_fp16\.mlpackage \.\.\.",
    r"coreml: converting \(fp16, iOS16, image input, std folded into the first conv\)",
    r"wrote \S+/mobilenet_v2_100_fp16\.mlpackage \(package\) in [\d.]+s",
    r"verify mobilenet_v2_100_fp(32\.pte|16\.mlpackage): \d+ real image\(s\) \(bundled\)",
    r"verify mobilenet_v2_100_fp(32\.pte|16\.mlpackage): passed \(SQNR [\d.]+ dB\)",
]


def _photos():
    from mobile_export.preprocess import bundled_photos

    photos = bundled_photos()
    if len(photos) < 6:
        pytest.skip("needs the bundled photographs (scikit-image, scikit-learn)")
    return photos


def test_readme_main_command_prints_only_our_lines(tmp_path):
    assert "mobile-export v2 --target all --weights random" in (ROOT / "README.md").read_text()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MOBILE_EXPORT_WARNINGS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mobile_export.cli", *MAIN_COMMAND, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    lines = proc.stderr.splitlines()
    foreign = [line for line in lines if not any(re.fullmatch(p, line) for p in OUR_LINES)]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert foreign == [], f"lines that are not ours on stderr: {foreign}"
    assert sum("passed (SQNR" in line for line in lines) == 2 and len(lines) == 11, lines
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    for entry in manifest["artifacts"]:  # a real check: the reference depends on the image
        assert entry["parity"]["passed"] and entry["parity"]["warnings"] == [], entry["parity"]
    assert manifest["model"]["weights"]["init"] == "input-dependent"


def test_noise_filter_drops_only_the_named_lines():
    from mobile_export import quiet

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        quiet.hide_backend_noise()
        quiet.hide_backend_noise()  # idempotent
        so = "/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so"
        logging.getLogger("torchao").warning("Failed to load %s: Could not load this library: %s", so, so)
        logging.getLogger("torch.utils._pytree").warning(
            "%s is an Enum subclass and is now natively supported by torch.compile as an opaque value type.",
            "<enum 'K'>",
        )
        logging.getLogger("torchao").warning(
            "Failed to load /x/libother.so: a real problem"
        )  # not the optional kernels
        logging.getLogger("torchao").error("quantization failed: a real error")
        logging.getLogger("torch.utils._pytree").warning("some other pytree warning")
        assert seen == [
            "Failed to load /x/libother.so: a real problem",
            "quantization failed: a real error",
            "some other pytree warning",
        ]
        quiet.show_backend_noise()
        logging.getLogger("torchao").warning("Failed to load %s: x", so)
        assert seen[-1].startswith("Failed to load") and so in seen[-1]
    finally:
        quiet.show_backend_noise()
        for lg in loggers:
            lg.removeHandler(handler)


def test_warnings_flag_keeps_backend_lines(cli):
    from mobile_export import quiet

    quiet.show_backend_noise()
    code, _, _ = cli("--warnings", "list", "--json")
    assert code == 0 and quiet._installed == {}
    code, _, _ = cli("list", "--json")
    assert code == 0 and set(quiet._installed) == {"torchao", "torch.utils._pytree"}
    quiet.show_backend_noise()


# --- random weights depend on the image ----------------------------------------------------------


def _members():
    from mobile_export.models import all_specs

    slow = {"mobilenet_v5_300m"}  # 294 M parameters: minutes to build on this machine
    return [pytest.param(s.name, marks=pytest.mark.slow) if s.name in slow else s.name for s in all_specs()]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", _members())
def test_random_weights_outputs_depend_on_the_image(name):
    import torch

    from mobile_export.models import create_model
    from mobile_export.preprocess import load_input
    from mobile_export.verify import metrics

    photos = _photos()[:6]
    built = create_model(name, weights="random", seed=0, resolution=64)
    with torch.no_grad():
        ref = np.concatenate(
            [built.module(torch.from_numpy(load_input(p, built.preprocess))).numpy() for p in photos]
        )
    ref = ref.reshape(len(photos), -1).astype(np.float64)
    deviation = ref - ref.mean(axis=0, keepdims=True)
    sqnr_vs_mean = 10 * np.log10((ref**2).sum() / (deviation**2).sum())
    assert np.isfinite(ref).all()
    assert metrics.input_dependence_db(ref) < 20.0  # verify's limit
    assert sqnr_vs_mean < 15.0, (
        f"{name}: outputs barely depend on the image ({sqnr_vs_mean:.1f} dB from their mean)"
    )
    if built.spec.output == "logits":
        assert len(set(ref.argmax(axis=1))) >= 2, f"{name}: every photo gets the same top-1"


def test_plain_random_init_is_what_old_manifests_recorded():
    """The faded weights the check used to run on, still buildable for version-1 manifests."""
    import torch

    from mobile_export.models import create_model
    from mobile_export.preprocess import load_input
    from mobile_export.verify import metrics

    photos = _photos()[:6]
    plain = create_model("v2-035", weights="random", seed=0, resolution=64, random_init="plain")
    assert "init" not in plain.weights
    with torch.no_grad():
        ref = np.concatenate(
            [plain.module(torch.from_numpy(load_input(p, plain.preprocess))).numpy() for p in photos]
        )
    assert metrics.input_dependence_db(ref) > 20.0  # verify's limit  # why the default changed


def test_random_weights_same_on_any_thread_count(tmp_path):
    """The BN statistics are measured in float64: the weights (and verify's digest check) do not
    depend on the thread count."""
    code = (
        "import sys, torch; torch.set_num_threads(int(sys.argv[1])); from mobile_export.models import create_model; "
        "print(create_model('v3-small-075', weights='random', seed=3, resolution=64).weights['sha256'])"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    digests = {
        subprocess.run(
            [sys.executable, "-c", code, str(n)], capture_output=True, text=True, env=env, check=True
        ).stdout.strip()
        for n in (1, 2)
    }
    assert len(digests) == 1 and len(next(iter(digests))) == 64


@pytest.mark.usefixtures("one_thread")
def test_same_seed_same_pte_bytes(tmp_path):
    from mobile_export.pipeline import ExportRequest, run_export

    def export(seed: int, folder: str) -> str:
        out = tmp_path / folder
        run_export(
            ExportRequest(
                model="v1-025",
                target="executorch",
                out=out,
                weights="random",
                seed=seed,
                resolution=48,
                verify=False,
            )
        )
        return hashlib.sha256((out / "mobilenet_v1_025_fp32.pte").read_bytes()).hexdigest()

    first = export(5, "a")
    assert export(5, "b") == first
    assert export(6, "c") != first


# --- the packaged example ------------------------------------------------------------------------


def test_example_weights_are_small_trained_and_labelled():
    from safetensors import safe_open

    from mobile_export.models.example import EXAMPLE

    path = EXAMPLE.path()
    assert path.is_file() and path.stat().st_size <= 5 * 1024 * 1024
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        dtypes = {str(fh.get_tensor(k).dtype) for k in fh.keys() if not k.endswith("num_batches_tracked")}
    assert dtypes == {"torch.float16"}
    assert meta["format"] == "mobile-export.weights" and meta["model"] == EXAMPLE.model
    assert len(json.loads(meta["labels"])) == EXAMPLE.classes == int(meta["num_classes"])
    assert json.loads(meta["preprocess"])["crop"] == EXAMPLE.resolution


@pytest.mark.usefixtures("one_thread")
def test_example_names_the_photos_it_was_trained_on():
    import torch

    from mobile_export.models import create_model
    from mobile_export.preprocess import load_input

    built = create_model("v2", weights="example")
    assert built.resolution == 64 and built.num_classes == 17 and built.weights["source"] == "example"
    assert not built.contract_assumed and "example" in built.contract_source
    known = [p for p in _photos() if p.stem in built.labels]
    with torch.no_grad():
        top1 = [
            built.labels[int(built.module(torch.from_numpy(load_input(p, built.preprocess))).argmax())]
            for p in known
        ]
    right = sum(t == p.stem for t, p in zip(top1, known))
    assert len(known) >= 8 and right >= len(known) - 2, list(zip([p.stem for p in known], top1))


def test_example_refuses_other_variants(cli, tmp_path):
    code, _, err = cli("v3-small", "--weights", "example", "--out", tmp_path / "x")
    assert code == 2 and "mobilenet_v2_100" in err and "--weights example" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_example_main_command_shows_top5_labels(cli, tmp_path):
    code, stdout, err = cli("v2", "--target", "executorch", "--weights", "example", "--out", tmp_path / "ex")
    assert code == 0, err
    shown = [line for line in err.splitlines() if " -> " in line]
    assert len(shown) == 1 and re.search(r": astronaut\.png -> astronaut \d+%, \w+", shown[0]), err
    manifest = json.loads((tmp_path / "ex" / "manifest.json").read_text())
    assert manifest["model"]["weights"]["source"] == "example" and manifest["labels"]["count"] == 17
    sample = manifest["artifacts"][0]["parity"]["sample"]
    assert sample["top5"][0]["label"] == "astronaut" and len(sample["top5"]) == 5
    assert manifest["artifacts"][0]["parity"]["passed"] and not manifest["preprocess"]["assumed"]


def test_list_and_info_say_what_the_example_was_trained_on(cli):
    code, out, _ = cli("info", "v2")
    assert code == 0 and "example" in out and "17 photographs" in out and "not ImageNet" in out
    code, out, _ = cli("list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert (
        rows["mobilenet_v2_100"]["example"]["classes"] == 17 and rows["mobilenet_v1_100"]["example"] is None
    )
