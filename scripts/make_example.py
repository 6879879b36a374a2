"""Write the packaged example weights (mobile_export/data/example_*.safetensors) from a
checkpoint made by scripts/train_small.py: fp16 tensors (half the size; the loader casts to
float32) and our own safetensors metadata, with labels, preprocessing contract and origin.

Usage: python scripts/make_example.py tests/fixtures/trained/mobilenet_v2_100_photos_64.safetensors
"""

from __future__ import annotations

import json
import sys

from safetensors import safe_open
from safetensors.torch import save_file

from mobile_export.models.example import EXAMPLE
from mobile_export.models.weights import OUR_FORMAT, OUR_FORMAT_VERSION


def main(src: str) -> None:
    with safe_open(src, framework="pt") as fh:
        info = json.loads(fh.metadata()["mobile_export"])
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    assert info["model"] == EXAMPLE.model and info["num_classes"] == EXAMPLE.classes, info
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    metadata = {
        "format": OUR_FORMAT,
        "version": OUR_FORMAT_VERSION,
        "model": info["model"],
        "num_classes": str(info["num_classes"]),
        "arch_overrides": "{}",
        "preprocess": json.dumps(info["preprocess"]),
        "labels": json.dumps(info["classes"]),
        "origin": json.dumps(
            {
                "source": "example",
                "detail": EXAMPLE.trained_on,
                "test_top1": info["test_top1"],
                "dataset": info["dataset"],
                "epochs": info["epochs"],
                "seed": info["seed"],
            }
        ),
    }
    dest = EXAMPLE.path()
    save_file(state, str(dest), metadata=metadata)
    print(f"{dest} {dest.stat().st_size:,} bytes, held-out top-1 {info['test_top1']}%")


if __name__ == "__main__":
    main(sys.argv[1])
