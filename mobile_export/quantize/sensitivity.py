"""Mixed precision as a measured choice: which modules to keep in float under a budget.

`--keep-fp32 auto[:PERCENT]` quantizes the model once with everything in int8 and once per
candidate unit (the stem, each block, the head, the classifier) with only that unit kept in
float, and scores each against the float model's logits on the calibration images (no labels).
Units are then taken greedily by decibels gained per float weight until the next one would
exceed PERCENT of the model's conv/linear weights. The choice and what it measured go into the
manifest; what gets rebuilt later is the chosen module list, so a rebuild never re-runs the sweep."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

DEFAULT_BUDGET_PERCENT = 5.0
MIN_GAIN_DB = 0.05  # a unit that gains less than this is noise, not sensitivity
EXACT_DB = 300.0  # identical outputs (JSON has no infinity)


@dataclass(frozen=True)
class Unit:
    """One candidate for float: module names as QuantRecipe.fp32_modules takes them."""

    modules: tuple[str, ...]
    weights: int  # conv/linear weight count, what it costs to keep in float (4 bytes, not 1)


@dataclass
class SensitivityReport:
    budget_percent: float
    total_weights: int
    base_sqnr_db: float  # nothing chosen: int8 but for the modules the recipe names itself
    units: list[dict] = field(default_factory=list)  # every unit: modules, weights, sqnr_db, gain_db
    chosen: list[str] = field(default_factory=list)
    chosen_weights: int = 0
    chosen_sqnr_db: float | None = None  # all chosen units in float together, measured again
    images: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "budget_percent": self.budget_percent,
            "total_weights": self.total_weights,
            "images": self.images,
            "base_sqnr_db": round(self.base_sqnr_db, 3),
            "chosen": list(self.chosen),
            "chosen_weights": self.chosen_weights,
            "chosen_percent": round(100 * self.chosen_weights / max(self.total_weights, 1), 3),
            "chosen_sqnr_db": None if self.chosen_sqnr_db is None else round(self.chosen_sqnr_db, 3),
            "units": self.units,
            "seconds": round(self.seconds, 1),
        }


def _is_compute(module) -> bool:
    import torch

    return isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear))


def _weights(module) -> int:
    return sum(m.weight.numel() for m in module.modules() if _is_compute(m))


def candidate_units(module, prefix: str = "") -> list[Unit]:
    """The model's units in order: a container of several computing children (`blocks`, a stage)
    is opened; a child that computes nothing but has parameters (a BatchNorm after its conv)
    joins the unit before it, so the conv and its norm stay in float together. A wrapper with
    one computing child (the input normalization) is looked through: names are the model's."""
    import torch

    while not prefix:
        computing = [c for c in module.children() if _weights(c)]
        if len(computing) != 1 or _is_compute(computing[0]):
            break
        module = computing[0]
    units: list[Unit] = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        computing = [c for c in child.children() if _weights(c)]
        if isinstance(child, (torch.nn.Sequential, torch.nn.ModuleList)) and len(computing) > 1:
            units.extend(candidate_units(child, path + "."))
        elif _weights(child):
            units.append(Unit((path,), _weights(child)))
        elif units and any(True for _ in child.parameters()):
            units[-1] = Unit((*units[-1].modules, path), units[-1].weights)
    return units


def module_inside(path: str, pattern: str) -> bool:
    """`path` is the module `pattern` names (a name or glob) or one of its submodules."""
    from fnmatch import fnmatchcase

    return fnmatchcase(path, pattern) or fnmatchcase(path, pattern + ".*")


def units_to_measure(module, recipe) -> list[Unit]:
    """The candidate units not already kept in float by the recipe's named modules."""
    return [
        u
        for u in candidate_units(module)
        if not all(any(module_inside(m, kept) for kept in recipe.fp32_modules) for m in u.modules)
    ]


def logits_sqnr_db(reference: Sequence, outputs: Sequence) -> float:
    """Signal-to-quantization-noise of `outputs` against `reference`, over all images."""
    signal = sum(float((r.double() ** 2).sum()) for r in reference)
    noise = sum(float(((r.double() - o.double()) ** 2).sum()) for r, o in zip(reference, outputs))
    return EXACT_DB if noise == 0 else min(EXACT_DB, 10 * math.log10(signal / noise))


def choose_fp32_units(units: Sequence[Unit], gains_db: Sequence[float], budget_weights: int) -> list[int]:
    """Indexes of the units to keep in float: greedily by gain per weight, those that gain at
    least MIN_GAIN_DB and still fit the budget."""
    order = sorted(range(len(units)), key=lambda i: -gains_db[i] / max(units[i].weights, 1))
    chosen, spent = [], 0
    for i in order:
        if gains_db[i] >= MIN_GAIN_DB and spent + units[i].weights <= budget_weights:
            chosen.append(i)
            spent += units[i].weights
    return sorted(chosen)


def sweep(
    module,
    units: Sequence[Unit],
    quantize: Callable,
    recipe,
    images: Sequence,
    budget_percent: float,
    progress: Callable[[int], None] = lambda _n: None,
) -> tuple[object, SensitivityReport]:
    """Measure the sensitivity of each of `units` (units_to_measure) and return (the recipe
    with the chosen modules in `fp32_modules`, the report). `quantize(recipe)` -> QuantizedModel
    is the caller's plain PTQ on its calibration images; `images` are those images as tensors."""
    import torch

    t0 = time.perf_counter()
    total = sum(u.weights for u in candidate_units(module))
    plain = dataclasses.replace(recipe, rounding="nearest", distill_epochs=0, fp32_auto=None)
    with torch.no_grad():
        reference = [module(x) for x in images]

        def score(fp32_modules: tuple[str, ...]) -> float:
            quantized = quantize(dataclasses.replace(plain, fp32_modules=fp32_modules))
            result = logits_sqnr_db(reference, [quantized.reference(x) for x in images])
            progress(1)
            return result

        base = score(recipe.fp32_modules)
        scores = [score((*recipe.fp32_modules, *u.modules)) for u in units]
    gains = [s - base for s in scores]
    picks = choose_fp32_units(units, gains, int(total * budget_percent / 100))
    chosen = [m for i in picks for m in units[i].modules]
    report = SensitivityReport(
        budget_percent=budget_percent,
        total_weights=total,
        base_sqnr_db=base,
        units=[
            {"modules": list(u.modules), "weights": u.weights, "sqnr_db": round(s, 3), "gain_db": round(g, 3)}
            for u, s, g in zip(units, scores, gains)
        ],
        chosen=chosen,
        chosen_weights=sum(units[i].weights for i in picks),
        images=len(images),
    )
    if len(picks) == 1:
        report.chosen_sqnr_db = scores[picks[0]]
    elif picks:
        with torch.no_grad():
            report.chosen_sqnr_db = score((*recipe.fp32_modules, *chosen))
    else:
        report.chosen_sqnr_db = base
    report.seconds = time.perf_counter() - t0
    resolved = dataclasses.replace(recipe, fp32_modules=(*recipe.fp32_modules, *chosen), fp32_auto=None)
    return resolved, report
