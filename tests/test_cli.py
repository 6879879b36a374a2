"""The CLI surface: list/info as data, one-line errors with exit codes, fast start."""

import json
import subprocess
import sys
import time

import pytest

from mobile_export.models.registry import all_specs


def test_list_json_has_the_family_with_exact_facts(cli):
    code, out, _ = cli("list", "--json")
    assert code == 0
    rows = json.loads(out)
    assert len(rows) >= 20
    by_name = {r["name"]: r for r in rows}
    assert by_name["mobilenet_v2_100"]["params"] == 3_504_872
    assert by_name["mobilenet_v3_large_100"]["params"] == 5_483_032
    assert by_name["mobilenet_v3_small_100"]["params"] == 2_542_856
    for r in rows:
        assert {
            "name",
            "aliases",
            "family",
            "width",
            "resolution",
            "params",
            "mmacs",
            "top1",
            "weights",
        } <= set(r)
    assert {s.name for s in all_specs()} == set(by_name)


def test_list_human_table(cli):
    code, out, _ = cli("list")
    assert code == 0
    assert "mobilenet_v2_100" in out and "3,504,872" in out


def test_info_by_alias(cli):
    code, out, _ = cli("info", "v3-small", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["name"] == "mobilenet_v3_small_100" and doc["paper"] == "arXiv:1905.02244"
    code, out, _ = cli("info", "mobilenet_v2")
    assert code == 0 and "imagenet:tv1" in out and "resize 256 -> crop 224" in out


@pytest.mark.parametrize("args", [["info", "mobilenet_v7"], ["v2x", "--target", "coreml"], ["export", "v9"]])
def test_unknown_model_is_usage_error_with_closest_match(cli, args):
    code, out, err = cli(*args)
    assert code == 2
    assert "unknown model" in err and "Known:" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_target_is_usage_error(cli):
    code, _, err = cli("v2", "--target", "tflite")
    assert code == 2 and "tflite" in err and "executorch" in err


def _time_cli(*args):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mobile_export.cli", *args], capture_output=True, text=True)
    return time.perf_counter() - start, proc


def test_help_and_list_are_fast_and_do_not_import_backends():
    # The bound is generous (the issue asks < 2 s) because CI machines are shared.
    for args in (["--help"], ["list"]):
        elapsed, proc = _time_cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert elapsed < 4.0, f"{args} took {elapsed:.2f}s"
    code = (
        "import sys, mobile_export.cli as c\n"
        "from click.testing import CliRunner\n"
        "CliRunner().invoke(c.main, ['list', '--json'])\n"
        "print(sorted(m for m in ('torch','executorch','coremltools') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
