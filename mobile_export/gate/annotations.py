"""GitHub Actions workflow commands (`::error file=...,title=...::message`): a failed
artifact shows as an annotation on the run's summary and on the file in the pull request."""

from __future__ import annotations

import os
from typing import Mapping


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """GitHub sets GITHUB_ACTIONS=true in every step."""
    return (env if env is not None else os.environ).get("GITHUB_ACTIONS") == "true"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(message: str, file: str | None = None, title: str | None = None, level: str = "error") -> str:
    """One workflow-command line; multi-line messages survive (newlines are escaped)."""
    if level not in ("error", "warning", "notice"):
        raise ValueError(f"unknown annotation level {level!r}")
    props = []
    if file:
        props.append(f"file={_escape_property(file)}")
    if title:
        props.append(f"title={_escape_property(title)}")
    head = f"::{level}" + (" " + ",".join(props) if props else "")
    return f"{head}::{_escape_data(message)}"


def for_report(report: dict, explanation: str) -> str | None:
    """The annotation for a gate report: an error for a failure or a check that could not
    run, nothing for a pass or a skip."""
    path = report.get("path") or report.get("artifact")
    if report.get("error"):
        return annotation(
            report["error"], file=path, title=f"parity check could not run: {report.get('artifact')}"
        )
    if report.get("skipped") or report.get("passed"):
        return None
    return annotation(explanation, file=path, title=f"parity gate failed: {report.get('artifact')}")
