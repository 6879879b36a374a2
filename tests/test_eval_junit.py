"""`eval --junit`: one JUnit case per artifact row, failed exactly when the row's top-1 drop
exceeds the project's max-top1-drop for that artifact (the gate's config), read back by a real
JUnit parser."""

from __future__ import annotations

import junitparser

from mobile_export.gate.junit import eval_cases, write_junit


def _row(folder, name, drop, top1):
    return {
        "file": str(folder / name),
        "top1": top1,
        "drop_points": drop,
        "drop_ci95": [drop - 0.5, drop + 0.5],
        "mcnemar_p": 0.25,
        "images": 539,
    }


def test_eval_cases_fail_only_past_the_project_limit(tmp_path):
    models = tmp_path / "app" / "models"
    models.mkdir(parents=True)
    (tmp_path / "app" / "pyproject.toml").write_text(
        '[tool.mobile-export]\nmax-top1-drop = 1.0\n\n[tool.mobile-export.limits."*_int8.pte"]\nmax-top1-drop = 0.3\n'
    )
    report = {
        "rows": [
            {"file": "reference", "top1": 97.59},
            _row(models, "m_fp32.pte", 0.0, 97.59),
            _row(models, "m_int8.pte", 0.37, 97.22),  # over its pattern row's 0.3
            _row(models, "m_fp16.mlpackage", 0.9, 96.69),  # under the file-wide 1.0
        ]
    }
    cases = eval_cases(report)
    by_name = {c.name: c for c in cases}
    assert [c.name for c in cases] == ["m_fp32.pte", "m_int8.pte", "m_fp16.mlpackage"]
    assert by_name["m_int8.pte"].failure.startswith("top-1 drop 0.37 points > max-top1-drop 0.3")
    assert by_name["m_fp32.pte"].failure is None and by_name["m_fp16.mlpackage"].failure is None
    assert "McNemar p 0.25" in by_name["m_fp16.mlpackage"].system_out

    path = tmp_path / "eval.xml"
    write_junit(path, "mobile-export eval", cases)
    suite = next(iter(junitparser.JUnitXml.fromfile(str(path))))
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (3, 1, 0, 0)


def test_without_a_limit_every_row_passes(tmp_path):
    report = {"rows": [{"file": "reference", "top1": 90.0}, _row(tmp_path, "m_int8.pte", 5.0, 85.0)]}
    (tmp_path / "mobile-export.toml").write_text('images = "x"\n')
    (case,) = eval_cases(report)
    assert case.failure is None and "drop +5.00 points" in case.system_out
