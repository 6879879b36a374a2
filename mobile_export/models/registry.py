"""The MobileNet family as data: one record per variant with its published facts, its
preprocessing contract and its checkpoint sources. Pure Python (no torch import), so
`mobile-export list` stays fast. `list`, the tests, the manifest and the apps read these."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, replace
from typing import Mapping

from ..errors import UnknownModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

TORCHVISION_STORE = "https://download.pytorch.org/models/"
HF_HUB = "https://huggingface.co/"


@dataclass(frozen=True)
class Preprocess:
    """The input contract, as timm's PretrainedCfg carries it: resize the shorter side to
    `resize`, center-crop `crop` x `crop`, scale to [0, 1], subtract mean, divide by std."""

    crop: int = 224
    resize: int = 256
    interpolation: str = "bilinear"  # bilinear | bicubic | nearest
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def crop_pct(self) -> float:
        return self.crop / self.resize

    def at_resolution(self, crop: int) -> Preprocess:
        """Same crop fraction at another input size."""
        if crop == self.crop:
            return self
        return replace(self, crop=crop, resize=int(round(crop / self.crop_pct)))

    def to_dict(self) -> dict:
        return {
            "resize": self.resize,
            "crop": self.crop,
            "crop_pct": round(self.crop_pct, 6),
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class WeightSource:
    """A published checkpoint: where it lives, how to check it, what it expects."""

    tag: str  # e.g. "tv1", "timm"
    format: str  # "torchvision" | "timm"
    url: str
    sha256: str | None  # full hash or the prefix torch.hub checks; None = pin on first download
    preprocess: Preprocess
    top1: float | None = None  # ImageNet top-1 published for this checkpoint
    license: str = "BSD-3-Clause"
    arch_overrides: Mapping[str, object] = field(default_factory=dict)  # e.g. {"bn_eps": 1e-3}
    note: str = ""

    @property
    def filename(self) -> str:
        name = self.url.rstrip("/").split("/")[-1]
        if self.format == "timm":  # hub files are all called model.safetensors: prefix the repo
            return self.url.split("/")[-4] + "." + name  # .../timm/<repo>/resolve/main/model.safetensors
        return name


@dataclass(frozen=True)
class ModelSpec:
    name: str  # explicit name with the width, e.g. mobilenet_v2_050
    aliases: tuple[str, ...]
    generation: str  # v1 .. v5
    variant: str  # "", "large", "small", "conv-small", "300m", ...
    width: float | None
    resolution: int  # the published input size
    params: int  # exact, at 1000 classes
    mmacs: float  # millions of multiply-accumulates at `resolution`
    top1: float | None  # published ImageNet top-1
    top1_source: str
    paper: str
    reference: str  # which implementation the counts come from
    builder: str  # "module:function", imported lazily
    build_kwargs: Mapping[str, object] = field(default_factory=dict)
    preprocess: Preprocess = Preprocess()
    weights: tuple[WeightSource, ...] = ()
    output: str = "logits"  # "logits" | "features"
    other_resolutions: Mapping[int, tuple[float, float | None]] = field(default_factory=dict)
    num_classes: int = 1000

    @property
    def family(self) -> str:
        return f"MobileNet{self.generation.upper()}"

    def default_weights(self) -> str:
        return "imagenet" if self.weights else "random"

    def weight_source(self, tag: str | None = None) -> WeightSource | None:
        if not self.weights:
            return None
        if tag is None:
            return self.weights[0]
        for source in self.weights:
            if source.tag == tag:
                return source
        return None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "family": self.family,
            "variant": self.variant,
            "width": self.width,
            "resolution": self.resolution,
            "params": self.params,
            "mmacs": self.mmacs,
            "top1": self.top1,
            "top1_source": self.top1_source,
            "paper": self.paper,
            "reference": self.reference,
            "output": self.output,
            "preprocess": self.preprocess.to_dict(),
            "weights": [
                {
                    "tag": w.tag,
                    "format": w.format,
                    "url": w.url,
                    "sha256": w.sha256,
                    "top1": w.top1,
                    "license": w.license,
                }
                for w in self.weights
            ],
            "default_weights": self.default_weights(),
        }


PAPERS = {
    "v1": "arXiv:1704.04861",
    "v2": "arXiv:1801.04381",
    "v3": "arXiv:1905.02244",
    "v4": "arXiv:2404.10518",
    "v5": "Gemma 3n (timm mobilenetv5.py)",
}

_TV_V1_RECIPE = Preprocess(crop=224, resize=256)
_TV_V2_RECIPE = Preprocess(crop=224, resize=232)
_TIMM_RECIPE = Preprocess(crop=224, resize=256, interpolation="bicubic")  # timm crop_pct 0.875


def _tv(file: str, tag: str, top1: float, preprocess: Preprocess, **kw) -> WeightSource:
    digest = file.rsplit("-", 1)[1].split(".")[0]
    return WeightSource(tag, "torchvision", TORCHVISION_STORE + file, digest, preprocess, top1, **kw)


def _timm(hub_id: str, preprocess: Preprocess, top1: float | None = None, **kw) -> WeightSource:
    url = f"{HF_HUB}timm/{hub_id}/resolve/main/model.safetensors"
    return WeightSource("timm", "timm", url, None, preprocess, top1, license="Apache-2.0", **kw)


def _spec(**kw) -> ModelSpec:
    kw.setdefault("paper", PAPERS[kw["generation"]])
    return ModelSpec(**kw)


def _v1(width: float, params: int, mmacs: float, top1: float, aliases=(), weights=(), other=None):
    suffix = f"{int(round(width * 100)):03d}"
    return _spec(
        name=f"mobilenet_v1_{suffix}",
        aliases=tuple(aliases) + (f"mobilenetv1_{suffix}",),
        generation="v1",
        variant="",
        width=width,
        resolution=224,
        params=params,
        mmacs=mmacs,
        top1=top1,
        top1_source="paper",
        reference=f"timm mobilenetv1_{suffix}",
        builder="mobile_export.models.v1:mobilenet_v1",
        build_kwargs={"width": width},
        weights=tuple(weights),
        other_resolutions=other or {},
    )


def _v2(width: float, params: int, mmacs: float, top1: float, aliases=(), weights=(), ref=None):
    suffix = f"{int(round(width * 100)):03d}"
    return _spec(
        name=f"mobilenet_v2_{suffix}",
        aliases=tuple(aliases) + (f"mobilenetv2_{suffix}",),
        generation="v2",
        variant="",
        width=width,
        resolution=224,
        params=params,
        mmacs=mmacs,
        top1=top1,
        top1_source="paper",
        reference=ref or f"timm mobilenetv2_{suffix}",
        builder="mobile_export.models.v2:mobilenet_v2",
        build_kwargs={"width": width},
        weights=tuple(weights),
    )


def _v3(size: str, width: float, params, mmacs, top1, minimal=False, aliases=(), weights=(), ref=None):
    suffix = f"{int(round(width * 100)):03d}"
    stem = f"mobilenet_v3_{size}" + ("_minimal" if minimal else "")
    timm_name = f"mobilenetv3_{size}" + ("_minimal" if minimal else "") + f"_{suffix}"
    return _spec(
        name=f"{stem}_{suffix}",
        aliases=tuple(aliases) + (timm_name,),
        generation="v3",
        variant=size + ("-minimal" if minimal else ""),
        width=width,
        resolution=224,
        params=params,
        mmacs=mmacs,
        top1=top1,
        top1_source="paper",
        reference=ref or f"timm {timm_name}",
        builder="mobile_export.models.v3:mobilenet_v3",
        build_kwargs={"size": size, "width": width, "minimal": minimal},
        weights=tuple(weights),
    )


def _v4(kind: str, resolution: int, params, mmacs, top1, weights=(), preprocess=None):
    timm_name = f"mobilenetv4_{kind}"
    return _spec(
        name=f"mobilenet_v4_{kind}",
        aliases=("v4-" + kind.replace("_", "-"), timm_name),
        generation="v4",
        variant=kind.replace("_", "-"),
        width=1.0,
        resolution=resolution,
        params=params,
        mmacs=mmacs,
        top1=top1,
        top1_source="paper",
        reference=f"timm {timm_name}",
        builder="mobile_export.models.v4:mobilenet_v4",
        build_kwargs={"kind": kind},
        preprocess=preprocess or Preprocess(crop=resolution, resize=resolution),
        weights=tuple(weights),
    )


def _v4_timm(hub_id: str, resolution: int, top1: float | None, crop_pct=0.95) -> WeightSource:
    # timm: resize to floor(crop / crop_pct) (pretrained_cfg of each hub id, timm 1.0.31)
    pre = Preprocess(crop=resolution, resize=math.floor(resolution / crop_pct), interpolation="bicubic")
    return _timm(hub_id, pre, top1)


def _v5(
    kind: str,
    timm_name: str,
    resolution: int,
    params: int,
    mmacs: float,
    aliases: tuple[str, ...],
    preprocess: Preprocess,
    weights=(),
    output="logits",
    num_classes=1000,
):
    """MobileNetV5 has no paper and no published top-1: counts are timm 1.0.31's (conv/linear MACs)."""
    return _spec(
        name=f"mobilenet_v5_{kind}",
        aliases=aliases,
        generation="v5",
        variant=kind,
        width=1.0,
        resolution=resolution,
        params=params,
        mmacs=mmacs,
        top1=None,
        top1_source="none published",
        reference=f"timm {timm_name}",
        builder="mobile_export.models.v5:mobilenet_v5",
        build_kwargs={"kind": kind},
        preprocess=preprocess,
        weights=tuple(weights),
        output=output,
        num_classes=num_classes,
    )


# Gemma 3n's encoder takes RGB in [0, 1] (mean 0, std 1) at 768x768, resized whole (crop_pct 1).
_GEMMA3N_INPUT = Preprocess(768, 768, "bicubic", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
_GEMMA3N_WEIGHTS = WeightSource(
    "gemma3n",
    "timm",
    f"{HF_HUB}timm/mobilenetv5_300m.gemma3n/resolve/main/model.safetensors",
    None,
    _GEMMA3N_INPUT,
    None,
    license="gemma",
    note="Gemma 3n vision encoder weights (Gemma Terms of Use); features, no classes",
)


SPECS: tuple[ModelSpec, ...] = (
    # --- V1: widths 1.0 / 0.75 / 0.5 / 0.25, any resolution -------------------------------
    _v1(
        1.0,
        4_231_976,
        568.7,
        70.6,
        aliases=("v1",),
        weights=[
            _timm(
                "mobilenetv1_100.ra4_e3600_r224_in1k",
                Preprocess(224, 256, "bicubic", INCEPTION_MEAN, INCEPTION_STD),
            )
        ],
        other={192: (418.1, 69.1), 160: (290.7, 67.2), 128: (186.4, 64.4)},
    ),
    _v1(0.75, 2_585_560, 325.4, 68.4, aliases=("v1-075",)),
    _v1(0.5, 1_331_592, 149.5, 63.7, aliases=("v1-050",)),
    _v1(0.25, 470_072, 41.0, 50.6, aliases=("v1-025",)),
    # --- V2: widths 1.4 / 1.0 / 0.75 / 0.5 / 0.35 ---------------------------------------
    _v2(
        1.4,
        6_108_776,
        582.2,
        74.7,
        aliases=("v2-140",),
        weights=[_timm("mobilenetv2_140.ra_in1k", _TIMM_RECIPE)],
    ),
    _v2(
        1.0,
        3_504_872,
        300.8,
        72.0,
        aliases=("v2", "mobilenet_v2"),
        ref="torchvision mobilenet_v2",
        weights=[
            _tv("mobilenet_v2-b0353104.pth", "tv1", 71.878, _TV_V1_RECIPE),
            _tv("mobilenet_v2-7ebf99e0.pth", "tv2", 72.154, _TV_V2_RECIPE),
            _timm("mobilenetv2_100.ra_in1k", _TIMM_RECIPE),
        ],
    ),
    _v2(0.75, 2_636_424, 209.1, 69.8, aliases=("v2-075",)),
    _v2(
        0.5,
        1_968_680,
        97.1,
        65.4,
        aliases=("v2-050",),
        weights=[_timm("mobilenetv2_050.lamb_in1k", _TIMM_RECIPE)],
    ),
    _v2(0.35, 1_677_128, 59.3, 60.3, aliases=("v2-035",)),
    # --- V3: Large / Small at 1.0 and 0.75, and the minimalistic variants ------------------
    _v3(
        "large",
        1.0,
        5_483_032,
        216.6,
        75.2,
        aliases=("v3-large", "v3", "mobilenet_v3_large"),
        ref="torchvision mobilenet_v3_large",
        weights=[
            _tv(
                "mobilenet_v3_large-8738ca79.pth",
                "tv1",
                74.042,
                _TV_V1_RECIPE,
                arch_overrides={"bn_eps": 1e-3},
            ),
            _tv(
                "mobilenet_v3_large-5c1a4163.pth",
                "tv2",
                75.274,
                _TV_V2_RECIPE,
                arch_overrides={"bn_eps": 1e-3},
            ),
            _timm("mobilenetv3_large_100.ra_in1k", _TIMM_RECIPE),
        ],
    ),
    _v3("large", 0.75, 3_993_528, 154.6, 73.3, aliases=("v3-large-075",)),
    _v3(
        "small",
        1.0,
        2_542_856,
        56.5,
        67.4,
        aliases=("v3-small", "mobilenet_v3_small"),
        ref="torchvision mobilenet_v3_small",
        weights=[
            _tv(
                "mobilenet_v3_small-047dcff4.pth",
                "tv1",
                67.668,
                _TV_V1_RECIPE,
                arch_overrides={"bn_eps": 1e-3},
            ),
            _timm("mobilenetv3_small_100.lamb_in1k", _TIMM_RECIPE),
        ],
    ),
    _v3(
        "small",
        0.75,
        2_041_872,
        43.4,
        65.4,
        aliases=("v3-small-075",),
        weights=[_timm("mobilenetv3_small_075.lamb_in1k", _TIMM_RECIPE)],
    ),
    _v3("large", 1.0, 3_924_288, 209.1, 72.3, minimal=True, aliases=("v3-large-minimal",)),
    _v3("small", 1.0, 2_044_736, 52.3, 61.9, minimal=True, aliases=("v3-small-minimal",)),
    # --- V4: UIB, Mobile MQA -------------------------------------------------------------
    _v4(
        "conv_small",
        224,
        3_774_024,
        186.0,
        73.8,
        weights=[_v4_timm("mobilenetv4_conv_small.e2400_r224_in1k", 224, None, crop_pct=0.875)],
        preprocess=Preprocess(224, 256, "bicubic"),
    ),
    _v4(
        "conv_medium",
        256,
        9_715_512,
        1080.2,
        79.9,
        weights=[_v4_timm("mobilenetv4_conv_medium.e500_r256_in1k", 256, None)],
    ),
    _v4(
        "conv_large",
        384,
        32_590_864,
        6376.0,
        82.9,
        weights=[_v4_timm("mobilenetv4_conv_large.e600_r384_in1k", 384, None)],
    ),
    _v4(
        "hybrid_medium",
        256,
        11_074_648,
        1229.0,
        80.7,
        weights=[_v4_timm("mobilenetv4_hybrid_medium.ix_e550_r256_in1k", 256, None)],
    ),
    _v4(
        "hybrid_large",
        384,
        37_764_624,
        7372.0,
        83.4,
        weights=[_v4_timm("mobilenetv4_hybrid_large.ix_e600_r384_in1k", 384, None)],
    ),
    # --- V5: the Gemma 3n vision encoder (RMSNorm, GELU, MQA, multi-scale fusion head) ------
    _v5(
        "300m",
        "mobilenetv5_300m_enc",
        768,
        294_126_912,
        387_838.3,
        ("v5-300m", "mobilenetv5_300m", "mobilenetv5_300m_enc"),
        _GEMMA3N_INPUT,
        weights=[_GEMMA3N_WEIGHTS],
        output="features",
        num_classes=0,
    ),
    _v5(
        "base",
        "mobilenetv5_base",
        256,
        82_647_976,
        19_590.4,
        ("v5-base", "mobilenetv5_base"),
        Preprocess(256, 256, "bicubic", INCEPTION_MEAN, INCEPTION_STD),
    ),
)


def _index(specs) -> dict[str, ModelSpec]:
    table: dict[str, ModelSpec] = {}
    for spec in specs:
        for key in (spec.name, *spec.aliases):
            key = _norm(key)
            if key in table and table[key] is not spec:
                raise ValueError(f"duplicate model name {key!r}")
            table[key] = spec
    return table


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


_BY_NAME = _index(SPECS)


def register(spec: ModelSpec) -> None:
    """Add a variant (used by generations defined outside this table, e.g. V5)."""
    global SPECS, _BY_NAME
    SPECS = SPECS + (spec,)
    _BY_NAME = _index(SPECS)


def all_specs() -> tuple[ModelSpec, ...]:
    return SPECS


def get_spec(name: str) -> ModelSpec:
    """Resolve a name or alias; an unknown one raises with the closest match and the choices."""
    spec = _BY_NAME.get(_norm(name))
    if spec is not None:
        return spec
    shortest = sorted({s.aliases[0] for s in SPECS})
    close = difflib.get_close_matches(_norm(name), list(_BY_NAME), n=1, cutoff=0.5)
    hint = f" Did you mean {_BY_NAME[close[0]].aliases[0]!r}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}.{hint} Known: {', '.join(shortest)} (see `mobile-export list`)."
    )
