"""The second reference for weight-only compression (verify/stored_weights.py): PyTorch running
the weights a file stores. First the pairing itself on a hand-built model whose folds are known
exactly, then real files: Core ML int8 weights with fp32 compute must match it to fp32 level
(which only an exact pairing can), and a 4-bit file whose dropped activation hides in the
float comparison is caught by it (the mutation suite covers every mode)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mobile_export.errors import ArtifactError
from mobile_export.targets import StoredWeights
from mobile_export.verify.stored_weights import module_with_stored_weights

SHAPE = (1, 3, 16, 16)
INV_STD = (1 / 0.229, 1 / 0.224, 1 / 0.225)


class Small(nn.Module):
    """stem conv -> BN -> ReLU, depthwise conv -> BN, pool, linear: the shapes MobileNets have."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.stem(x)))
        x = self.bn2(self.dw(x))
        return self.fc(x.mean((2, 3)))


def _small():
    torch.manual_seed(0)
    model = Small().eval()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.1)
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
    return model


def _bn_scale(bn):
    return (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()


def _as_stored(model, fold_std=True):
    """What a converter stores: BatchNorm folded per output channel, 1/std into the stem."""
    stem = model.stem.weight.detach().numpy() * _bn_scale(model.bn1).reshape(-1, 1, 1, 1)
    if fold_std:
        stem = stem * np.asarray(INV_STD).reshape(1, -1, 1, 1)
    dw = model.dw.weight.detach().numpy() * _bn_scale(model.bn2).reshape(-1, 1, 1, 1)
    return StoredWeights(
        layers=[
            ("conv", "stem_conv", stem.astype(np.float32)),
            ("conv", "dw_conv", dw.astype(np.float32)),
            ("linear", "fc_linear", model.fc.weight.detach().numpy().copy()),
        ],
        input_scale=INV_STD if fold_std else None,
        how="test",
    )


def test_exact_stored_weights_give_back_the_model():
    model = _small()
    rebuilt, weights = module_with_stored_weights(model, _as_stored(model), SHAPE)
    x = torch.randn(SHAPE)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-5)
    assert [r["module"] for r in weights["layers"]] == ["stem", "dw", "fc"]
    assert weights["min_sqnr_db"] > 100  # float32 rounding of the folds only
    assert rebuilt is not model and torch.equal(model.stem.weight, _small().stem.weight)  # input untouched


def test_a_perturbed_layer_shows_in_its_row_and_in_the_outputs():
    model = _small()
    stored = _as_stored(model)
    kind, name, w = stored.layers[1]
    noisy = w + np.random.default_rng(0).standard_normal(w.shape).astype(np.float32) * np.abs(w).mean()
    stored.layers[1] = (kind, name, noisy)
    rebuilt, weights = module_with_stored_weights(model, stored, SHAPE)
    assert weights["min_layer"] == "dw"
    assert weights["min_sqnr_db"] < 10 and weights["layers"][0]["sqnr_db"] > 100
    x = torch.randn(SHAPE)
    with torch.no_grad():
        assert not torch.allclose(rebuilt(x), model(x), atol=1e-3)


def test_a_negated_layer_pairs_with_its_own_layer_and_shows_minus_6_db():
    model = _small()
    stored = _as_stored(model)
    kind, name, w = stored.layers[1]
    stored.layers[1] = (kind, name, -w)
    _, weights = module_with_stored_weights(model, stored, SHAPE)
    assert weights["model_only"] == [] and weights["min_layer"] == "dw"
    assert abs(weights["min_sqnr_db"] - (-6.02)) < 0.01  # error 2w: 10 log10(1/4)


def test_unfolded_std_is_not_divided_out():
    model = _small()
    rebuilt, weights = module_with_stored_weights(model, _as_stored(model, fold_std=False), SHAPE)
    assert weights["min_sqnr_db"] > 100


def test_layers_the_file_lacks_or_adds_are_named():
    """A converter's own convs (RMSNorm's channel mean as a 1x1 conv of 1/C) pair with no layer,
    and a layer whose stored weight is unrecognisable (scrambled) keeps the model's weights;
    both are listed. A file with no layer of the model at all is refused."""
    model = _small()
    stored = _as_stored(model)
    kind, name, w = stored.layers[1]
    scrambled = np.random.default_rng(0).permutation(w.ravel()).reshape(w.shape)
    extra = ("conv", "mean_as_conv", np.full((1, 8, 1, 1), 1 / 8, np.float32))
    stored.layers[1] = (kind, name, scrambled)
    stored.layers.append(extra)
    _, weights = module_with_stored_weights(model, stored, SHAPE)
    assert weights["file_only"] == ["dw_conv", "mean_as_conv"]
    assert weights["model_only"] == ["dw"]
    assert [r["module"] for r in weights["layers"]] == ["stem", "fc"]
    with pytest.raises(ArtifactError, match="none of the file's conv/linear weights belongs to the model"):
        module_with_stored_weights(model, StoredWeights([extra], None, "test"), SHAPE)


def test_a_layer_scale_after_the_norm_is_folded_too():
    """V4 hybrids: conv -> BatchNorm -> layer scale, which the converter folds into the conv."""
    from mobile_export.models.blocks import LayerScale2d

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.ls = LayerScale2d(8, 1e-2)

        def forward(self, x):
            return self.ls(self.bn(self.conv(x)))

    torch.manual_seed(0)
    model = Scaled().eval()
    with torch.no_grad():
        model.ls.gamma.uniform_(0.01, 1.0)
        model.bn.weight.uniform_(0.5, 1.5)
    gain = _bn_scale(model.bn) * model.ls.gamma.detach().numpy()
    w = model.conv.weight.detach().numpy() * gain.reshape(-1, 1, 1, 1)
    _, weights = module_with_stored_weights(
        model, StoredWeights([("conv", "mul", w)], None, "t"), (1, 3, 4, 4)
    )
    assert weights["min_sqnr_db"] > 100


# --- real files -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_setup(tmp_path_factory):
    pytest.importorskip("coremltools")
    import mutation_helpers as mh

    work = tmp_path_factory.mktemp("stored_weights")
    calib, held = mh.photo_folders(work, 16, 12)
    return mh, work, held


def test_int8_weights_with_fp32_compute_match_their_own_weights_exactly(photo_setup):
    """fp32 compute leaves only summation order between the file and PyTorch with its weights,
    so anything below fp32 level would mean the pairing or an unfolding is wrong (124.6 dB
    measured; against float the same file is 43 dB)."""
    from mobile_export.verify import verify_artifact
    from mobile_export.verify.report import format_report

    mh, work, held = photo_setup
    mode = mh.Mode("coreml-fp32-int8", "coreml", {"precision": "fp32", "compress": "int8"})
    path = mh.export_correct("v2", mode, work / "fp32_int8", None)
    report = verify_artifact(path, images=held)
    assert report["passed"], report["failures"]
    stored = report["vs_stored_weights"]
    assert stored["sqnr_db"] >= 100 > report["vs_float"]["sqnr_db"]
    assert report["thresholds"]["sqnr_db_vs_stored_weights"] == 60.0
    assert 35 < stored["weights_vs_float"]["min_sqnr_db"] < 60  # int8: ~6 dB per bit
    assert len(stored["weights_by_layer"]) == 53  # V2 1.0: 52 convs and the classifier
    text = format_report(report)
    assert "vs own wts" in text and "least faithful layer" in text


def test_layers_stored_in_another_order_pair_by_content():
    """A converter may order same-shape layers differently from the forward (a hybrid's
    attention projections): each stored weight still finds its own layer."""

    class TwoBranches(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Conv2d(3, 4, 1, bias=False)
            self.k = nn.Conv2d(3, 4, 1, bias=False)

        def forward(self, x):
            return self.q(x) * self.k(x)

    torch.manual_seed(0)
    model = TwoBranches().eval()
    q, k = model.q.weight.detach().numpy().copy(), model.k.weight.detach().numpy().copy()
    stored = StoredWeights([("conv", "k_conv", k), ("conv", "q_conv", q)], None, "test")
    rebuilt, weights = module_with_stored_weights(model, stored, (1, 3, 4, 4))
    assert {r["op"]: r["module"] for r in weights["layers"]} == {"k_conv": "k", "q_conv": "q"}
    assert weights["min_sqnr_db"] > 100
