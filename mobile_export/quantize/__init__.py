"""Post-training quantization: calibration data from real photos (shared by the ExecuTorch
int8 and Core ML w8a8 paths) and PT2E int8 for XNNPACK. Heavy libraries load lazily."""

from .calibration import CalibrationSet, load_calibration
from .pt2e import OBSERVERS, QuantizedModel, QuantRecipe, quantize_pt2e

__all__ = [
    "CalibrationSet",
    "load_calibration",
    "OBSERVERS",
    "QuantizedModel",
    "QuantRecipe",
    "quantize_pt2e",
]
