"""Project parity limits: a `[tool.mobile-export]` table in the app's pyproject.toml, or a
mobile-export.toml, found by walking up from the artifact (then from the working directory)
the way ruff and black find theirs. Validated when read: an unknown key is an error that
names the key and the file, so a typo never silently loosens a gate.

    [tool.mobile-export]
    images = "tests/parity-images"        # relative to this file
    skip = ["*_experimental*"]            # artifact-name globs not checked
    min-sqnr = 40                         # for every artifact ...

    [tool.mobile-export.limits."*_int8.pte"]    # ... unless a pattern row says otherwise
    min-cosine = 0.99
    max-top1-drop = 0.5                   # points on a labelled set: read by `eval`

A mobile-export.toml holds the same keys at its top level. Precedence per limit: a CLI flag,
then the LAST matching pattern row, then the file's top-level keys, then the built-in table
(mobile_export/verify/thresholds.py)."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

PYPROJECT = "pyproject.toml"
STANDALONE = "mobile-export.toml"

# Config key -> the verify limit it sets. None: carried for `eval` (a labelled set), not
# checked by verify.
LIMIT_KEYS: dict[str, str | None] = {
    "min-sqnr": "sqnr_db",
    "min-cosine": "cosine",
    "min-agreement": "top1_agreement",
    "max-top1-drop": None,
}
_RANGES = {
    "min-sqnr": (-math.inf, math.inf),
    "min-cosine": (-1.0, 1.0),
    "min-agreement": (0.0, 1.0),
    "max-top1-drop": (0.0, 100.0),
}
_TOP_KEYS = {"images", "skip", "limits", *LIMIT_KEYS}


@dataclass(frozen=True)
class Limit:
    """One effective project limit and where it was set (file:pattern or a CLI flag)."""

    value: float
    source: str


@dataclass(frozen=True)
class PatternRule:
    pattern: str
    limits: dict[str, float]  # config key -> value

    def matches(self, artifact_name: str) -> bool:
        return fnmatch.fnmatchcase(artifact_name, self.pattern)


@dataclass(frozen=True)
class GateConfig:
    """A validated project table. `path` None means no file: the built-in table alone."""

    path: Path | None = None
    images: Path | None = None
    skip: tuple[str, ...] = ()
    defaults: dict[str, float] = field(default_factory=dict)
    rules: tuple[PatternRule, ...] = ()

    def __post_init__(self):
        for key, value in self.defaults.items():
            _check_limit(key, value, self._where())
        for rule in self.rules:
            for key, value in rule.limits.items():
                _check_limit(key, value, self._where(rule.pattern))

    def _where(self, pattern: str | None = None) -> str:
        name = str(self.path) if self.path else "config"
        return f"{name}:{pattern}" if pattern else name

    def skipped(self, artifact_name: str) -> str | None:
        """The skip glob that excludes this artifact, if any."""
        return next((p for p in self.skip if fnmatch.fnmatchcase(artifact_name, p)), None)

    def limits_for(self, artifact_name: str, cli: dict[str, float] | None = None) -> dict[str, Limit]:
        """Project limits (config keys) for one artifact: file top level < matching pattern
        rows (last wins) < CLI flags."""
        out = {key: Limit(value, self._where()) for key, value in self.defaults.items()}
        for rule in self.rules:
            if rule.matches(artifact_name):
                out.update(
                    {key: Limit(value, self._where(repr(rule.pattern))) for key, value in rule.limits.items()}
                )
        for key, value in (cli or {}).items():
            if value is not None:
                _check_limit(key, value, "command line")
                out[key] = Limit(float(value), f"--{key}")
        return out


def verify_overrides(limits: dict[str, Limit]) -> dict[str, tuple[float | None, str]]:
    """Project limits as verify_artifact's `overrides`: {threshold name: (value, source)}."""
    overrides: dict[str, tuple[float | None, str]] = {}
    for key, limit in limits.items():
        name = LIMIT_KEYS[key]
        if name is None:
            continue
        overrides[name] = (limit.value, limit.source)
    return overrides


def _check_limit(key: str, value, where: str) -> None:
    if key not in LIMIT_KEYS:
        raise ConfigError(f"{where}: unknown limit {key!r}; use one of {', '.join(LIMIT_KEYS)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
    lo, hi = _RANGES[key]
    if not lo <= value <= hi:
        raise ConfigError(f"{where}: {key} = {value} is outside [{lo:g}, {hi:g}]")


# --- reading ------------------------------------------------------------------------


def _toml_load(path: Path) -> dict:
    import tomllib

    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror}); pass an existing file to --config") from None


def table_of(path: Path) -> dict | None:
    """The mobile-export table of a file: pyproject's [tool.mobile-export] (None when the
    file has none), or a mobile-export.toml's top level."""
    doc = _toml_load(path)
    if path.name == PYPROJECT:
        table = doc.get("tool", {}).get("mobile-export")
        if table is not None and not isinstance(table, dict):
            raise ConfigError(f"{path}: [tool.mobile-export] must be a table")
        return table
    return doc


def parse_table(table: dict, path: Path | None) -> GateConfig:
    """A GateConfig from a TOML table; relative `images` resolve against the file's folder."""
    where = str(path) if path else "config"
    for key in table:
        if key not in _TOP_KEYS:
            raise ConfigError(
                f"{where}: unknown key {key!r} in [tool.mobile-export]; "
                f"allowed: {', '.join(sorted(_TOP_KEYS))}"
            )
    images = table.get("images")
    if images is not None:
        if not isinstance(images, str) or not images:
            raise ConfigError(f"{where}: images must be a folder path (a string), got {images!r}")
        images_path = Path(images)
        if not images_path.is_absolute() and path is not None:
            images_path = path.parent / images_path
    else:
        images_path = None
    skip = table.get("skip", [])
    if isinstance(skip, str):
        skip = [skip]
    if not isinstance(skip, list) or not all(isinstance(s, str) and s for s in skip):
        raise ConfigError(f"{where}: skip must be a list of artifact-name globs, got {skip!r}")
    defaults = {k: v for k, v in table.items() if k in LIMIT_KEYS}
    rows = table.get("limits", {})
    if not isinstance(rows, dict):
        raise ConfigError(
            f'{where}: limits must be a table of artifact-name globs, e.g. [tool.mobile-export.limits."*.pte"]'
        )
    rules = []
    for pattern, row in rows.items():
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: limits.{pattern!r} must be a table of limits (min-sqnr = 40, ...)")
        rules.append(PatternRule(pattern, dict(row)))
    return GateConfig(path=path, images=images_path, skip=tuple(skip), defaults=defaults, rules=tuple(rules))


def load_config(path: str | Path) -> GateConfig:
    """An explicit --config FILE: a pyproject.toml (its [tool.mobile-export] table) or a
    mobile-export.toml (any other name is read like one)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"config file {p} does not exist; pass a pyproject.toml or mobile-export.toml to --config"
        )
    table = table_of(p)
    if table is None:
        raise ConfigError(f"{p} has no [tool.mobile-export] table; add one or pass another file to --config")
    return parse_table(table, p.resolve())


def find_config_file(start: str | Path) -> Path | None:
    """Nearest mobile-export.toml, or pyproject.toml with a [tool.mobile-export] table, in
    `start` or its parents (a mobile-export.toml wins in the same folder, as ruff.toml does)."""
    here = Path(start).resolve()
    if not here.is_dir():
        here = here.parent
    for folder in (here, *here.parents):
        standalone = folder / STANDALONE
        if standalone.is_file():
            return standalone
        pyproject = folder / PYPROJECT
        if pyproject.is_file() and table_of(pyproject) is not None:
            return pyproject
    return None


def discover(artifact: str | Path | None = None, cwd: str | Path | None = None) -> GateConfig:
    """The project config that governs `artifact`: searched from the artifact's folder, then
    from the working directory; an empty GateConfig (built-in limits) when there is none."""
    for start in (Path(artifact).resolve().parent if artifact else None, Path(cwd) if cwd else Path.cwd()):
        if start is None:
            continue
        found = find_config_file(start)
        if found is not None:
            return parse_table(table_of(found), found.resolve())
    return GateConfig()
