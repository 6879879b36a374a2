"""The main job end to end through the CLI: a published checkpoint from the cache, labels,
the manifest contract, and the refusal to overwrite."""

import json

import pytest
import torch
from et_helpers import well_conditioned_state

from mobile_export.models import create_model, get_spec


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A torch hub cache holding a timm-format V1 checkpoint under the published file name
    (no network here). Its values are BN-woken well-conditioned weights (tests/et_helpers.py),
    not untrained random ones: the export's parity check must see outputs that depend on the
    image, else it compares against a constant (issue 21) and now refuses to pass."""
    from safetensors.torch import save_file

    home = tmp_path_factory.mktemp("torch_home")
    source = get_spec("v1").weight_source()
    ckpt = home / "hub" / "checkpoints" / source.filename
    ckpt.parent.mkdir(parents=True)
    state = well_conditioned_state(get_spec("v1").name, 64, seed=7)
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt))
    return home


def test_imagenet_weights_from_cache_export_with_labels_and_contract(cli, hub_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(hub_cache))
    out = tmp_path / "out"
    code, stdout, err = cli(
        "v1", "--target", "executorch", "--weights", "imagenet", "--resolution", "64", "--out", out, "--json"
    )
    assert code == 0, err
    manifest = json.loads(stdout)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["weights"]["source"] == "imagenet"
    # timm's V1 ra4 checkpoint expects mean = std = 0.5 and bicubic resizing: carried, not retyped
    assert (
        manifest["preprocess"]["mean"] == [0.5, 0.5, 0.5]
        and manifest["preprocess"]["interpolation"] == "bicubic"
    )
    assert manifest["labels"]["count"] == 1000
    labels = (out / "labels.txt").read_text().splitlines()
    assert labels[0] == "tench" and len(labels) == 1000
    (entry,) = manifest["artifacts"]
    assert entry["parity"]["passed"] is True
    assert (
        entry["parity"]["input_dependence"]["sqnr_db_vs_own_mean"]
        < entry["parity"]["thresholds"]["max_input_independence_db"]
    )
    assert entry["input"]["shape"] == [1, 3, 64, 64] and entry["input"]["normalized_in_model"] is True
    # the loaded weights are the cached file's, not a fresh random init
    ref = well_conditioned_state(get_spec("v1").name, 64, seed=7)
    again = create_model("v1", weights="imagenet").module.state_dict()
    assert all(torch.equal(ref[k], again[k]) for k in ref)


def test_offline_imagenet_without_cache_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    code, _, err = cli("v2", "--target", "executorch", "--out", tmp_path / "o")
    assert code == 1
    assert "offline" in err and "--weights" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_existing_artifact_is_refused_without_force(cli, tmp_path):
    out = tmp_path / "o"
    args = (
        "v3-small-075",
        "--target",
        "executorch",
        "--weights",
        "random",
        "--resolution",
        "48",
        "--out",
        out,
        "--no-verify",
    )
    code, _, err = cli(*args)
    assert code == 0, err
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, _, err = cli(*args)
    assert code == 1 and "--force" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    code, _, err = cli(*args, "--force")
    assert code == 0, err
