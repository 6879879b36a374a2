"""Data-aware palettes (--compress palettize-auto): the knapsack picks by measured noise and
keeps the budget, the probe palettizes a weight exactly as the export stores it, and a real
export fits its size budget, records its choice and passes verify."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_export.coreml import compress as cq
from mobile_export.coreml.sensitivity import CANDIDATE_BITS, WeightInfo, choose_bits, palettized


def _weights():
    return [
        WeightInfo("a", (64, 64, 1, 1), 16),
        WeightInfo("b", (64, 64, 1, 1), 16),
        WeightInfo("c", (64, 64, 1, 1), 16),
    ]


def test_choice_follows_sensitivity_and_keeps_the_budget():
    weights = _weights()
    # "a" is 100x more sensitive than "b" and "c" at every size (noise halves per extra bit).
    noise = {
        n: {b: scale * 2.0**-b for b in CANDIDATE_BITS} for n, scale in (("a", 100.0), ("b", 1.0), ("c", 1.0))
    }
    by = {w.name: w for w in weights}
    budget = sum(by[n].bytes_at(4) for n in by)  # what all-4-bit would take
    bits = choose_bits(noise, weights, budget, fixed_bytes=0)
    assert sum(by[n].bytes_at(b) for n, b in bits.items()) <= budget
    assert bits["a"] > 4 and bits["b"] < 4 and bits["b"] == bits["c"]
    chosen = sum(noise[n][b] for n, b in bits.items())
    assert chosen < sum(noise[n][4] for n in noise)  # better than uniform 4-bit at the same size
    # A budget below even the smallest palettes: the smallest everywhere.
    assert set(choose_bits(noise, weights, 1.0, fixed_bytes=0).values()) == {CANDIDATE_BITS[0]}
    # A budget above 8 bits everywhere: 8 bits everywhere.
    assert set(choose_bits(noise, weights, 1e9, fixed_bytes=0).values()) == {8}


def test_palettized_copy_has_at_most_2_to_the_bits_values_per_group():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 8, 3, 3)).astype(np.float16)
    for nbits in (2, 4, 6):
        approx = palettized(w, nbits, 8, cq.kmeans_lut(nbits))
        for g in range(0, 32, 8):
            assert len(np.unique(approx[g : g + 8])) <= 2**nbits
        err = float(np.sum((approx.astype(np.float64) - w) ** 2) / np.sum(w.astype(np.float64) ** 2))
        assert err < {2: 0.2, 4: 0.02, 6: 0.002}[nbits]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("coremltools")
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "scripts"))
    import train_small

    from mobile_export.coreml.target import CoreMLTarget
    from mobile_export.targets.base import ExportOptions

    model, meta, pre = train_small.load_checkpoint(
        root / "tests" / "fixtures" / "trained" / "mobilenet_v2_035_digits_64.safetensors"
    )
    built = train_small.as_built(model, meta, pre, "digits")
    work = tmp_path_factory.mktemp("palauto")
    dest = work / "m.mlpackage"
    fields = CoreMLTarget().export(
        built,
        ExportOptions(compress="palettize-auto", size_budget=0.15, calibration_limit=8),
        dest,
        lambda _m: None,
    )
    float_pkg = work / "float.mlpackage"
    CoreMLTarget().export(built, ExportOptions(compress="none"), float_pkg, lambda _m: None)
    return built, dest, fields, float_pkg


def test_export_fits_the_budget_and_records_its_choice(exported):
    built, dest, fields, _ = exported
    q = fields["quantization"]
    assert q["mode"] == "palettize-auto" and q["size_budget"] == 0.15
    record = q["palette_bits"]
    fp32_bytes = 4 * sum(p.numel() for p in built.module.parameters())
    assert record["palettized_bytes"] <= 0.15 * fp32_bytes * 1.01
    weight_bin = (dest / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size
    assert weight_bin <= 0.16 * fp32_bytes  # the file itself, blob headers and alignment included
    assert set(map(int, record["layers_per_bits"])) <= set(CANDIDATE_BITS)
    assert sum(record["layers_per_bits"].values()) == len(record["bits"])


def test_the_probe_measures_what_the_export_stores(exported):
    """Each weight in the saved package decompresses to exactly the palettized copy of the
    float weight that the sensitivity pass measured (same groups, same k-means, same bits)."""
    from mobile_export.coreml import mil

    _, dest, fields, float_pkg = exported
    bits = fields["quantization"]["palette_bits"]["bits"]
    compressed, floats = mil.load_program(dest), mil.load_program(float_pkg)
    luts = {
        op.name.removesuffix("_palettized"): op
        for op in compressed.ops
        if op.type == "constexpr_lut_to_dense"
    }
    assert set(luts) == set(bits)
    for name, nbits in bits.items():
        float_w = np.asarray(floats.consts[name])
        stored = np.asarray(compressed.consts[luts[name].outputs[0]])
        probed = palettized(float_w, nbits, cq.palette_group_size(float_w.shape[0]), cq.kmeans_lut(nbits))
        assert np.array_equal(stored, probed), name


def test_verify_passes_the_data_aware_file(exported):
    from mobile_export import manifest as mf
    from mobile_export.verify import verify_artifact

    built, dest, fields, _ = exported
    m = mf.new_manifest(built)
    mf.upsert_artifact(m, mf.artifact_record(dest, **fields))
    mf.write_manifest(dest.parent, m)
    report = verify_artifact(dest, reference=built)
    assert report["passed"], report["failures"]
    assert report["vs_float"]["sqnr_db"] > 14.0


def test_checkpointed_sensitivity_measures_what_full_runs_measure(exported):
    """measure_noise reruns only the ops from each weight's first reader on; every number
    must equal the one a full run with that weight palettized gives."""
    import torch

    from mobile_export.coreml import mil
    from mobile_export.coreml.sensitivity import measure_noise, output_of
    from mobile_export.coreml.target import softmax_input

    _, _, _, float_pkg = exported
    program = mil.load_program(float_pkg)
    name = program.inputs[0].name
    rng = np.random.default_rng(3)
    samples = [{name: rng.integers(0, 256, (64, 64, 3)).astype(np.float32)} for _ in range(3)]
    floats = [
        n for n, v in program.consts.items() if isinstance(v, np.ndarray) and v.ndim == 4 and v.size > 256
    ]
    picked = [floats[0], floats[len(floats) // 2], floats[-1]][::-1]  # out of program order
    weights = [
        WeightInfo(n, program.consts[n].shape, cq.palette_group_size(program.consts[n].shape[0]))
        for n in picked
    ]
    output = softmax_input(program.spec)
    noise = measure_noise(program, samples, weights, cq.kmeans_lut, output)
    assert list(noise) == picked

    refs = [output_of(program, f, output) for f in samples]
    signal = float(sum(np.sum(r**2) for r in refs))
    for w in weights:
        tensor = program._static[w.name]
        original = tensor.clone()
        for nbits in (2, 6):
            approx = palettized(np.asarray(program.consts[w.name]), nbits, w.group_size, cq.kmeans_lut(nbits))
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(approx)).to(tensor.dtype))
            full = sum(float(np.sum((output_of(program, f, output) - r) ** 2)) for f, r in zip(samples, refs))
            assert noise[w.name][nbits] == full / signal, (w.name, nbits)
        tensor.copy_(original)
        assert noise[w.name][2] > noise[w.name][6] > 0
