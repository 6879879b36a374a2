"""JUnit XML, the report format every CI reads (GitHub, GitLab, Jenkins, Azure): one
<testcase> per artifact, the missed limits as the <failure> message and the metrics as
<system-out>. Only elements and attributes of the Jenkins/Ant JUnit schema are written.

    write_junit("parity.xml", "mobile-export verify", [case_from_report(r) for r in reports])

`eval --junit` builds its own JUnitCase rows (name, failure message, metrics) and calls
write_junit the same way."""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..fsutil import write_bytes_atomic
from .check import config_for, explain


@dataclass(frozen=True)
class JUnitCase:
    name: str  # the artifact's file name
    classname: str  # e.g. "mobile-export.verify.app/models"
    seconds: float = 0.0
    failure: str | None = None  # one line: the missed limits
    details: str = ""  # the failure's body (the one-screen explanation)
    error: str | None = None  # the check could not run (damaged file, missing weights)
    skipped: str | None = None
    system_out: str = ""

    def __post_init__(self):
        if sum(x is not None for x in (self.failure, self.error, self.skipped)) > 1:
            raise ValueError("a JUnit case is failed, errored or skipped, not several")


def case_from_report(report: dict, classname: str = "mobile-export.verify") -> JUnitCase:
    """A verify/gate report (or {"artifact", "error"} when the check could not run) as one test case."""
    if report.get("skipped"):
        return JUnitCase(
            report["artifact"], classname, skipped=report["skipped"], system_out=_metrics_text(report)
        )
    if report.get("error"):
        return JUnitCase(
            report["artifact"], classname, error=report["error"], system_out=_metrics_text(report)
        )
    failure = (
        None if report.get("passed") else ("; ".join(report.get("failures", [])) or "parity check failed")
    )
    return JUnitCase(
        report["artifact"],
        classname,
        seconds=float(report.get("seconds") or 0.0),
        failure=failure,
        details=explain(report) if failure else "",
        system_out=_metrics_text(report),
    )


def _metrics_text(report: dict) -> str:
    keep = {
        k: report[k]
        for k in (
            "path",
            "target",
            "precision",
            "quantization",
            "images",
            "vs_float",
            "vs_quantized",
            "steps_vs_quantized",
            "vs_stored_weights",
            "thresholds",
            "threshold_sources",
            "gate",
            "warnings",
        )
        if k in report
    }
    return json.dumps(keep, indent=2, default=str)


def to_xml(suite: str, cases: list[JUnitCase], timestamp: datetime | None = None) -> bytes:
    counts = {
        "tests": len(cases),
        "failures": sum(c.failure is not None for c in cases),
        "errors": sum(c.error is not None for c in cases),
        "skipped": sum(c.skipped is not None for c in cases),
    }
    total = sum(c.seconds for c in cases)
    root = ET.Element("testsuites", name=suite, time=f"{total:.3f}", **{k: str(v) for k, v in counts.items()})
    when = (timestamp or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S")
    ts = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        time=f"{total:.3f}",
        timestamp=when,
        hostname=socket.gethostname() or "localhost",
        **{k: str(v) for k, v in counts.items()},
    )
    for c in cases:
        tc = ET.SubElement(ts, "testcase", classname=c.classname, name=c.name, time=f"{c.seconds:.3f}")
        if c.failure is not None:
            ET.SubElement(tc, "failure", message=_clean(c.failure), type="ParityFailure").text = _clean(
                c.details or c.failure
            )
        elif c.error is not None:
            ET.SubElement(tc, "error", message=_clean(c.error), type="CheckError").text = _clean(c.error)
        elif c.skipped is not None:
            ET.SubElement(tc, "skipped", message=_clean(c.skipped))
        if c.system_out:
            ET.SubElement(tc, "system-out").text = _clean(c.system_out)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def write_junit(path: str | Path, suite: str, cases: list[JUnitCase]) -> Path:
    """Write the JUnit file atomically (a CI never reads half of one)."""
    return write_bytes_atomic(path, to_xml(suite, cases))


def _clean(text: str) -> str:
    """XML 1.0 forbids most control characters, even escaped."""
    return "".join(ch for ch in text if ch in "\t\n\r" or ord(ch) >= 0x20)


def eval_cases(
    report: dict, config_file: str | Path | None = None, max_top1_drop: float | None = None
) -> list:
    """`eval --junit`: one test case per artifact row of an eval report. A row fails when its
    top-1 drop against the reference exceeds the project's `max-top1-drop` for that artifact
    (points; [tool.mobile-export]); without a limit it passes and carries its numbers; an
    artifact the project's `skip` names is a skipped case. `max_top1_drop` (eval's
    --max-top1-drop) overrides the project's value for every row."""
    cases = []
    for row in report["rows"][1:]:
        name = Path(row["file"]).name
        config = config_for(row["file"], config_file)
        limit = config.limits_for(name, {"max-top1-drop": max_top1_drop}).get("max-top1-drop")
        lo, hi = row["drop_ci95"]
        summary = (
            f"top-1 {row['top1']}% vs reference {report['rows'][0]['top1']}%: drop {row['drop_points']:+.2f} "
            f"points [95% CI {lo:+.2f}, {hi:+.2f}], McNemar p {row['mcnemar_p']:.3g}, n={row['images']}"
        )
        skip = config.skipped(name)
        if skip is not None:  # the project's `skip` holds for eval's gate as for verify's
            cases.append(
                JUnitCase(
                    name,
                    "mobile-export.eval",
                    skipped=f"matches skip {skip!r} in {config.path}",
                    system_out=summary,
                )
            )
            continue
        failure = None
        if limit is not None and row["drop_points"] > limit.value:
            failure = (
                f"top-1 drop {row['drop_points']:.2f} points > max-top1-drop {limit.value:g} ({limit.source})"
            )
        cases.append(
            JUnitCase(
                name,
                "mobile-export.eval",
                failure=failure,
                details=summary if failure else "",
                system_out=summary,
            )
        )
    return cases
