"""Layer-by-layer bias correction (QuantRecipe.bias_correction) and glob fp32_modules."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_export.models.registry import Preprocess
from mobile_export.preprocess import bundled_photos
from mobile_export.quantize import QuantRecipe, load_calibration, quantize_pt2e

PRE = Preprocess(crop=32, resize=36, interpolation="bilinear")


def _net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5),
    ).eval()


@pytest.fixture(scope="module")
def calib():
    assert len(bundled_photos()) >= 5
    return load_calibration(None, PRE, progress=False).inputs


def _mean_logit_shift(graph_module, calib) -> np.ndarray:
    import torch

    with torch.no_grad():
        q = np.concatenate([graph_module(torch.from_numpy(x)).numpy() for x in calib])
        f = np.concatenate([_net()(torch.from_numpy(x)).numpy() for x in calib])
    return np.abs((q - f).mean(axis=0))


def test_bias_correction_removes_the_mean_shift(calib):
    import torch

    example = torch.zeros(1, 3, 32, 32)
    logs = []
    plain = quantize_pt2e(_net(), example, calib, QuantRecipe(observer="minmax"))
    corrected = quantize_pt2e(_net(), example, calib, QuantRecipe(observer="minmax", bias_correction=True),
                              log=logs.append)
    assert any("bias correction on 3 layer(s)" in m for m in logs)  # two convs and the linear
    before, after = _mean_logit_shift(plain.graph_module, calib), _mean_logit_shift(corrected.graph_module, calib)
    # what is left is the int8 output rounding (half a step at most), not the accumulated shift
    assert after.max() <= 0.5 * corrected.output_scale + 1e-6
    assert after.max() < before.max()
    assert QuantRecipe.from_dict(QuantRecipe(bias_correction=True).to_dict()).bias_correction


def test_fp32_modules_accepts_globs(calib):
    import torch

    kept = quantize_pt2e(_net(), torch.zeros(1, 3, 32, 32), calib, QuantRecipe(fp32_modules=("[6]",)))
    assert kept.kept_fp32_nodes == 1 and kept.output_scale is None
