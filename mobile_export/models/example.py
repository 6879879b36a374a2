"""The trained example that ships inside the package: `--weights example`.

Pretrained ImageNet weights need a download; a newcomer offline would only ever see random
weights. This small MobileNetV2 was trained with scripts/train_small.py on a task made from
real photographs that ship with scikit-image / scikit-learn, so the main command shows real
top-5 labels on a real photo with nothing to fetch. Facts only here (no torch import)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class ExampleWeights:
    model: str  # the one variant the file fits
    file: str  # inside the mobile_export package
    resolution: int
    classes: int
    held_out_top1: float  # % on crops from a part of each photo never seen in training
    trained_on: str

    def path(self) -> Path:
        return Path(str(resources.files("mobile_export").joinpath(self.file)))

    def to_dict(self) -> dict:
        return {
            "weights": "example",
            "model": self.model,
            "resolution": self.resolution,
            "classes": self.classes,
            "held_out_top1": self.held_out_top1,
            "trained_on": self.trained_on,
        }


EXAMPLE = ExampleWeights(
    model="mobilenet_v2_100",
    file="data/example_mobilenet_v2_100_photos_64.safetensors",
    resolution=64,
    classes=17,
    held_out_top1=88.92,
    trained_on=(
        "17 photographs bundled with scikit-image and scikit-learn (astronaut, chelsea the cat, coffee, "
        "rocket, ...): 'which photo is this crop from', 64 px crops from the left 65% of each photo, "
        "scripts/train_small.py --dataset photos, 10 epochs; not ImageNet, 17 labels only"
    ),
)
