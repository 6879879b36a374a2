"""Checkpoints: key mapping against the real libraries' names (committed fixtures), local
files of every accepted kind and every refused kind, seeded random init, and the
hash-checked download against a loopback HTTP server. No real pretrained file is needed."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import re
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mobile_export.errors import DownloadError, UsageError, WeightsError
from mobile_export.models import all_specs, build_architecture, create_model, get_spec
from mobile_export.models import weights as W
from mobile_export.models.registry import INCEPTION_MEAN

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
FIXTURE_FILES = sorted(FIXTURES.glob("*/*.json"))


def _fixture(path: Path) -> dict:
    doc = json.loads(path.read_text())
    doc["shapes"] = {k: tuple(s) for k, s in doc["state_dict"]}
    return doc


def _spec_or_skip(name: str):
    try:
        return get_spec(name)
    except UsageError:
        pytest.skip(f"{name} has no counterpart registered in the family yet")


@functools.cache
def _meta_shapes(spec_name: str, num_classes: int) -> dict:
    """Our state-dict names and shapes, without allocating the parameters."""
    spec = get_spec(spec_name)
    with torch.device("meta"):
        module = build_architecture(spec, num_classes)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and text
    return text


# --- names and shapes against the reference libraries ------------------------------------


def test_fixtures_cover_every_variant_with_a_reference():
    models = {p.stem for p in FIXTURE_FILES}
    assert {"mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"} <= models
    for spec in all_specs():
        if spec.generation in ("v1", "v2", "v3", "v4"):
            assert {spec.name, *spec.aliases} & models, f"no reference fixture for {spec.name}"


@pytest.mark.parametrize("path", [p for p in FIXTURE_FILES if p.parent.name == "timm"], ids=lambda p: p.stem)
def test_timm_names_and_shapes_are_ours_in_order(path):
    """The contract: a timm checkpoint loads by identity, tensor for tensor."""
    fx = _fixture(path)
    spec = _spec_or_skip(fx["model"])
    ours = _meta_shapes(spec.name, fx["num_classes"] or spec.num_classes)
    assert list(ours.items()) == list(fx["shapes"].items())
    assert W.detect_format(fx["shapes"]) == "timm"
    plan = W.plan_mapping(fx["shapes"], ours, "timm")
    assert plan.ok and len(plan.mapping) == fx["tensors"]
    assert fx["params"] == W._params(fx["shapes"])
    if spec.output == "logits" and spec.width is not None:
        assert fx["params"] == spec.params, "registry params disagree with the real timm model"
    assert W.classifier_classes(fx["shapes"], "timm") == fx["num_classes"]


@pytest.mark.parametrize(
    "path", [p for p in FIXTURE_FILES if p.parent.name == "torchvision"], ids=lambda p: p.stem
)
def test_torchvision_maps_one_to_one_in_order(path):
    fx = _fixture(path)
    spec = get_spec(fx["model"])
    ours = _meta_shapes(spec.name, fx["num_classes"])
    assert W.detect_format(fx["shapes"]) == "torchvision"
    plan = W.plan_mapping(fx["shapes"], ours, "torchvision")
    assert plan.ok, plan.describe(spec.name, 1000)
    assert len(plan.mapping) == fx["tensors"] == len(ours)  # counters included
    assert sorted(plan.mapping.values()) == sorted(ours)  # onto, and one to one
    for tv_key, our_key in plan.mapping.items():  # a shift by one would pair weight with bias
        assert tv_key.rsplit(".", 1)[1] == our_key.rsplit(".", 1)[1], (tv_key, our_key)
    assert plan.mapping["features.0.0.weight"] == "conv_stem.weight"
    last_linear = [k for k in fx["shapes"] if k.startswith("classifier.") and k.endswith(".weight")][-1]
    assert plan.mapping[last_linear] == "classifier.weight"
    assert fx["params"] == spec.params
    assert W.classifier_classes(fx["shapes"], "torchvision") == 1000
    if spec.generation == "v3":  # the one shape change: Linear(960, 1280) / (576, 1024) is our 1x1 conv
        assert plan.mapping["classifier.0.weight"] == "conv_head.weight"
        assert fx["shapes"]["classifier.0.weight"] == ours["conv_head.weight"][:2]
        assert ours["conv_head.weight"][2:] == (1, 1)


@pytest.mark.parametrize(
    "path", [p for p in FIXTURE_FILES if p.parent.name == "torchvision"], ids=lambda p: p.stem
)
def test_torchvision_order_survives_safetensors_sorting(path):
    """safetensors stores keys as sorted text; the positional mapping rebuilds the order."""
    keys = [k for k, _ in _fixture(path)["state_dict"]]
    assert sorted(sorted(keys), key=W.torchvision_order) == keys


def test_torchvision_file_for_another_variant_gives_a_readable_diff():
    fx = _fixture(FIXTURES / "torchvision" / "mobilenet_v3_large.json")
    ours = _meta_shapes("mobilenet_v3_small_100", 1000)
    plan = W.plan_mapping(fx["shapes"], ours, "torchvision")
    assert not plan.ok
    text = plan.describe("mobilenet_v3_small_100", 1000)
    assert "\n" not in text
    assert "5,483,032" in text and "2,542,856" in text and "another variant" in text
    assert "features." in text and "blocks." in text


# --- real tensors through every file kind -------------------------------------------------


@pytest.fixture(scope="module")
def small():
    """A real model, seeded: (spec, module, timm-format state dict)."""
    built = create_model("v2-035", weights="random", seed=7)
    return built.spec, built.module, {k: v.clone() for k, v in built.module.state_dict().items()}


def _assert_same_tensors(module, state):
    got = module.state_dict()
    assert list(got) == list(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def test_random_is_seeded_and_reproducible():
    a = create_model("v3-small-075", weights="random", seed=3)
    b = create_model("v3-small-075", weights="random", seed=3)
    c = create_model("v3-small-075", weights="random", seed=4)
    _assert_same_tensors(b.module, a.module.state_dict())
    assert a.weights["source"] == "random" and a.weights["seed"] == 3
    assert a.weights["sha256"] == b.weights["sha256"] != c.weights["sha256"]
    assert not torch.equal(a.module.conv_stem.weight, c.module.conv_stem.weight)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix", "safetensors"])
def test_timm_format_files_load_by_identity(tmp_path, small, wrap):
    spec, _, state = small
    path = tmp_path / ("w.safetensors" if wrap == "safetensors" else "w.pth")
    if wrap == "safetensors":
        save_file(state, str(path))
    else:
        obj = {
            "plain": state,
            "state_dict": {"state_dict": state, "epoch": 3},
            "model": {"model": state},
            "module_prefix": {f"module.{k}": v for k, v in state.items()},
        }[wrap]
        torch.save(obj, path)
    built = create_model(spec.name, weights=str(path), seed=99)
    _assert_same_tensors(built.module, state)
    assert built.weights["source"] == "file" and built.weights["format"] == "timm"
    assert built.weights["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_counters_are_optional(tmp_path, small):
    spec, _, state = small
    path = tmp_path / "no_counters.safetensors"
    save_file({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, str(path))
    built = create_model(spec.name, weights=str(path), seed=99)
    assert torch.equal(built.module.classifier.weight, state["classifier.weight"])


def _to_torchvision(state: dict, fixture: str) -> dict:
    """Our tensors under torchvision's names (the reverse of the loader's mapping), built
    from the real torchvision key list: a file torchvision itself could have written."""
    fx = _fixture(FIXTURES / "torchvision" / f"{fixture}.json")
    tv_keys = [k for k in fx["shapes"] if not k.endswith("num_batches_tracked")]
    our_keys = [k for k in state if not k.endswith("num_batches_tracked")]
    assert len(tv_keys) == len(our_keys)
    out = {}
    for tv, ours in zip(tv_keys, our_keys):
        tensor = state[ours]
        if tensor.dim() == 4 and len(fx["shapes"][tv]) == 2:  # V3 head: 1x1 conv -> Linear
            tensor = tensor.reshape(tensor.shape[:2])
        out[tv] = tensor.clone()
    return out


def test_torchvision_v3_file_loads_with_its_bn_eps(tmp_path):
    ref = create_model("v3-small", weights="random", seed=5)
    state = ref.module.state_dict()
    path = tmp_path / "tv_small.pth"
    torch.save(_to_torchvision(state, "mobilenet_v3_small"), path)
    built = create_model("v3-small", weights=str(path), seed=0)
    for k, v in state.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(built.module.state_dict()[k], v), k
    eps = {m.eps for m in built.module.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert eps == {1e-3}, "torchvision V3 BatchNorm eps must come with its checkpoint"
    assert built.weights["format"] == "torchvision" and built.weights["arch_overrides"] == {"bn_eps": 1e-3}


def test_num_classes_is_read_from_a_fine_tuned_file(tmp_path):
    ref = create_model("v2", weights="random", seed=1, num_classes=10)
    path = tmp_path / "tv_v2_10.safetensors"  # keys stored sorted as text
    save_file(_to_torchvision(ref.module.state_dict(), "mobilenet_v2"), str(path))
    built = create_model("v2", weights=str(path))
    assert built.num_classes == 10 and built.weights["format"] == "torchvision"
    for k, v in ref.module.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(built.module.state_dict()[k], v), k
    with pytest.raises(WeightsError) as exc:
        create_model("v2", weights=str(path), num_classes=5)
    assert "--num-classes 10" in _one_line(exc)


def test_wrong_variant_file_names_counts_keys_and_fix(tmp_path, small):
    _, _, state = small
    path = tmp_path / "v2_035.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError) as exc:
        create_model("v2-050", weights=str(path))
    text = _one_line(exc)
    assert "mobilenet_v2_050" in text and "mismatched" in text and "another variant" in text
    assert re.search(r"mismatched \(blocks\.1\.0\.\S+ file \(\d+(,\d+)*\) vs model \(\d+", text), (
        text
    )  # earliest layer first


def test_missing_and_unexpected_keys_are_counted(tmp_path, small):
    spec, _, state = small
    broken = dict(state)
    broken.pop("conv_head.weight")
    broken["extra.weight"] = torch.zeros(2)
    path = tmp_path / "broken.safetensors"
    save_file(broken, str(path))
    with pytest.raises(WeightsError) as exc:
        create_model(spec.name, weights=str(path))
    text = _one_line(exc)
    assert "1 missing (conv_head.weight (1280,112,1,1))" in text
    assert "1 unexpected (extra.weight (2))" in text


def test_torchvision_file_for_v1_is_refused(tmp_path):
    ref = create_model("v2", weights="random", seed=1)
    path = tmp_path / "tv.pth"
    torch.save(_to_torchvision(ref.module.state_dict(), "mobilenet_v2"), path)
    with pytest.raises(WeightsError) as exc:
        create_model("v1", weights=str(path))
    assert "torchvision has no MobileNetV1" in _one_line(exc)


def test_malicious_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": torch.zeros(1), "extra": Payload()}, path)
    with pytest.raises(WeightsError) as exc:
        create_model("v2-035", weights=str(path))
    assert "refusing to load evil.pth" in _one_line(exc)
    assert not marker.exists()
    # control: the file really runs code when unpickled without weights_only
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_files_give_one_line(tmp_path, small, suffix):
    _, _, state = small
    full = tmp_path / f"full{suffix}"
    save_file(state, str(full)) if suffix == ".safetensors" else torch.save(state, full)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(WeightsError) as exc:
        create_model("v2-035", weights=str(cut))
    text = _one_line(exc)
    assert f"cut{suffix}" in text and "truncated" in text


@pytest.mark.parametrize(
    "content, expect",
    [
        (b"", "is empty"),
        (b"hello, I am a text file\n" * 4, "neither a PyTorch checkpoint"),
    ],
)
def test_not_a_checkpoint(tmp_path, content, expect):
    path = tmp_path / "weights.bin"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as exc:
        create_model("v2-035", weights=str(path))
    assert expect in _one_line(exc)


def test_missing_file_and_unknown_keys(tmp_path):
    with pytest.raises(WeightsError) as exc:
        create_model("v2-035", weights=str(tmp_path / "nope.pth"))
    assert "does not exist" in _one_line(exc)
    path = tmp_path / "resnet.safetensors"
    save_file({"layer1.0.conv1.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(WeightsError) as exc:
        create_model("v2-035", weights=str(path))
    assert "cannot tell the format" in _one_line(exc) and "layer1.0.conv1.weight" in str(exc.value)
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(WeightsError) as exc:
        create_model("v2-035", weights=str(path))
    assert "not a state dict" in _one_line(exc)


def test_our_format_round_trips_model_head_eps_and_preprocess(tmp_path):
    tv = tmp_path / "tv.pth"
    ref = create_model("v3-small", weights="random", seed=2, num_classes=7)
    torch.save(_to_torchvision(ref.module.state_dict(), "mobilenet_v3_small"), tv)
    loaded = create_model("v3-small", weights=str(tv), resolution=160)
    ours = W.save_weights(loaded, tmp_path / "mine.safetensors")
    again = create_model("v3-small", weights=str(ours), resolution=160)
    assert again.weights["format"] == "mobile-export" and again.num_classes == 7
    assert {m.eps for m in again.module.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}
    assert again.preprocess == loaded.preprocess
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(again.module(x), loaded.module(x))
    with pytest.raises(WeightsError) as exc:
        create_model("v3-large", weights=str(ours))
    assert "holds weights for mobilenet_v3_small_100, not mobilenet_v3_large_100" in _one_line(exc)


def test_a_timm_file_takes_the_published_timm_preprocessing(tmp_path):
    """mobilenetv1_100.ra4 expects mean = std = 0.5: a timm-format V1 file inherits that."""
    v1 = create_model("v1", weights="random", seed=0)
    assert v1.preprocess.mean != INCEPTION_MEAN  # random weights keep the variant's default
    path = tmp_path / "v1.safetensors"
    save_file(v1.module.state_dict(), str(path))
    loaded = create_model("v1", weights=str(path))
    assert loaded.preprocess.mean == loaded.preprocess.std == INCEPTION_MEAN
    assert loaded.preprocess.interpolation == "bicubic"


# --- published checkpoints ---------------------------------------------------------------


def test_imagenet_names_tags_and_missing_checkpoints():
    with pytest.raises(UsageError) as exc:
        W.resolve_source(get_spec("v1-050"), "imagenet")
    assert "no published checkpoint" in _one_line(exc) and "--weights random" in str(exc.value)
    with pytest.raises(UsageError) as exc:
        W.resolve_source(get_spec("v2"), "imagenet:tv9")
    assert "imagenet:tv1, imagenet:tv2" in _one_line(exc)
    source, overrides = W.resolve_source(get_spec("v3-large"), "imagenet:tv2")
    assert source.url.endswith("mobilenet_v3_large-5c1a4163.pth") and overrides == {"bn_eps": 1e-3}
    assert W.resolve_source(get_spec("v2"), "random") == (None, {})


def test_offline_never_touches_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("network used while offline"))
    with pytest.raises(DownloadError) as exc:
        create_model("v2", weights="imagenet")
    text = _one_line(exc)
    assert "offline" in text and "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth" in text
    assert "--weights /path/to/mobilenet_v2-b0353104.pth" in text


class _Server:
    """http.server on 127.0.0.1 serving a folder, in a thread; `stop()` frees the port."""

    def __init__(self, root: Path):
        self.hits = 0
        handler = functools.partial(type("Handler", (_QuietHandler,), {"counter": self}), directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.counter.hits += 1
        super().do_GET()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A loopback server over tmp/served, and a fresh hub cache; online mode."""
    root = tmp_path / "served"
    root.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(W.OFFLINE_ENV, raising=False)
    server = _Server(root)
    yield root, server
    server.stop()


def _cache_files(tmp_path) -> list[str]:
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_download_verifies_caches_and_reuses(tmp_path, served, monkeypatch):
    root, server = served
    ref = create_model("v2", weights="random", seed=11)
    blob = tmp_path / "blob.pth"
    torch.save(_to_torchvision(ref.module.state_dict(), "mobilenet_v2"), blob)
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    name = f"mobilenet_v2-{digest[:8]}.pth"
    blob.rename(root / name)
    spec = get_spec("v2")
    source = replace(spec.weights[0], url=server.url + name, sha256=digest[:8])
    spec = replace(spec, weights=(source,))

    built = create_model(spec, weights="imagenet")
    _assert_same_tensors(built.module, ref.module.state_dict())
    assert built.weights["source"] == "imagenet" and built.weights["sha256"] == digest
    assert _cache_files(tmp_path) == [name] and server.hits == 1
    monkeypatch.setenv(W.OFFLINE_ENV, "1")  # the cached, verified file needs no network
    again = create_model(spec, weights="imagenet")
    assert again.weights["sha256"] == digest and server.hits == 1
    # fine-tuning start: published backbone, a fresh seeded head of another size (as timm does)
    head10 = create_model(spec, weights="imagenet", num_classes=10, seed=1)
    assert head10.module.classifier.weight.shape == (10, 1280)
    assert torch.equal(head10.module.conv_head.weight, ref.module.conv_head.weight)
    assert "classifier reset to 10 classes" in head10.weights["classifier"]


def test_hash_mismatch_keeps_nothing(tmp_path, served):
    root, server = served
    (root / "mobilenet_v2-deadbeef.pth").write_bytes(b"not what the name promises" * 1000)
    source = replace(
        get_spec("v2").weights[0], url=server.url + "mobilenet_v2-deadbeef.pth", sha256="deadbeef"
    )
    with pytest.raises(DownloadError) as exc:
        W.fetch(source)
    text = _one_line(exc)
    assert "expected deadbeef" in text and "nothing was kept" in text and "--weights /path/to/" in text
    assert _cache_files(tmp_path) == []  # no file, no temporary left behind


def test_timm_hub_files_are_pinned_on_first_download(tmp_path, served, monkeypatch):
    root, server = served
    repo = root / "timm" / "mobilenetv2_050.lamb_in1k" / "resolve" / "main"
    repo.mkdir(parents=True)
    first, second = (_safetensors_bytes(tmp_path, float(i)) for i in (1, 2))
    (repo / "model.safetensors").write_bytes(first)
    source = replace(
        get_spec("v2-050").weights[0],
        url=server.url + "timm/mobilenetv2_050.lamb_in1k/resolve/main/model.safetensors",
    )
    assert source.sha256 is None and source.filename == "mobilenetv2_050.lamb_in1k.model.safetensors"
    path, digest = W.fetch(source)
    pin = path.with_name(path.name + ".sha256")
    assert pin.read_text().strip() == digest == hashlib.sha256(first).hexdigest()
    path.write_bytes(b"tampered")
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    with pytest.raises(DownloadError) as exc:
        W.fetch(source)
    assert f"expected {digest[:12]}" in _one_line(exc)
    monkeypatch.delenv(W.OFFLINE_ENV)
    (repo / "model.safetensors").write_bytes(second)  # the hub file changed under us
    with pytest.raises(DownloadError):
        W.fetch(source)
    assert path.read_bytes() == b"tampered"  # the failed download replaced nothing


def _safetensors_bytes(tmp_path, value: float) -> bytes:
    path = tmp_path / f"t{value}.safetensors"
    save_file({"x": torch.full((4,), value)}, str(path))
    return path.read_bytes()


def test_an_error_page_is_never_pinned(tmp_path, served):
    root, server = served
    repo = root / "timm" / "x.in1k" / "resolve" / "main"
    repo.mkdir(parents=True)
    (repo / "model.safetensors").write_bytes(b"<html>rate limited</html>")
    source = replace(
        get_spec("v2-050").weights[0], url=server.url + "timm/x.in1k/resolve/main/model.safetensors"
    )
    with pytest.raises(DownloadError) as exc:
        W.fetch(source)
    assert "did not return a checkpoint" in _one_line(exc)
    assert _cache_files(tmp_path) == []


def test_server_down_is_one_line(tmp_path, served):
    root, server = served
    url = server.url + "mobilenet_v2-b0353104.pth"
    server.stop()
    server.stop = lambda: None
    with pytest.raises(DownloadError) as exc:
        W.fetch(replace(get_spec("v2").weights[0], url=url))
    text = _one_line(exc)
    assert (
        text.startswith(f"cannot download {url}") and "--weights /path/to/mobilenet_v2-b0353104.pth" in text
    )
    assert _cache_files(tmp_path) == []


def test_a_published_file_passed_by_path_keeps_its_recipe(tmp_path):
    """The torchvision "V2" recipe (resize 232) follows its file, recognised by hash."""
    ref = create_model("v3-small", weights="random", seed=6)
    path = tmp_path / "downloaded_elsewhere.pth"
    torch.save(_to_torchvision(ref.module.state_dict(), "mobilenet_v3_small"), path)
    prefix = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    spec = get_spec("v3-small")
    tv2 = replace(
        spec.weights[0], tag="tv2", sha256=prefix, preprocess=replace(spec.weights[0].preprocess, resize=232)
    )
    spec = replace(spec, weights=(spec.weights[0], tv2))
    assert create_model(spec, weights=str(path)).preprocess.resize == 232
    assert create_model("v3-small", weights=str(path)).preprocess.resize == 256  # unknown file: tv1 recipe
