"""JUnit XML reports as BuildRecords: the history of a test suite before ciopt ran it.

One file is one invocation (command "test", source "junit"); each <testcase> is one action
labelled `classname::name` (mnemonic "junit"). Read:

    <testsuites [time=S]>                              (optional wrapper)
      <testsuite name=.. [timestamp=ISO-8601] [time=S] [hostname=..]>
        <testcase classname=.. name=.. [time=S]>
          [<failure/> | <error/> | <skipped/>]         (absent: passed)

The invocation starts at the earliest suite timestamp (a timestamp without a zone is UTC),
else at the file's modification time; it lasts the wrapper's time, else the sum of the suites'
times, else the sum of the cases'. Cases are laid end to end from their suite's start (JUnit
does not say when each ran). The invocation id is a digest of the file's bytes, so importing
the same file twice adds it once.
"""

from __future__ import annotations

import hashlib
import math
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ciopt.analytics.exchange import FORMAT_VERSION
from ciopt.errors import UserError

__all__ = ["read_junit"]

_ACTION_COLUMNS = ["label", "mnemonic", "status", "started_at", "finished_at", "duration_s", "exit_code",
                   "test_outcome", "message"]


def read_junit(path: Path, data: bytes, *, baseline: bool = True, branch: str | None = None,
               commit: str | None = None) -> dict[str, Any]:
    """The record document of one JUnit XML file; UserError naming the file and element."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise UserError(f"{path}: not well-formed XML: {e}") from None
    if root.tag == "testsuite":
        suites = [root]
    elif root.tag == "testsuites":
        suites = list(root.iter("testsuite"))
    else:
        raise UserError(f"{path}: the root element is <{root.tag}>; a JUnit report has <testsuites> or <testsuite>")
    fallback_start = path.stat().st_mtime if path.exists() else 0.0
    starts = [_timestamp(path, s) for s in suites]
    start = min((t for t in starts if t is not None), default=fallback_start)

    rows: list[list[Any]] = []
    suite_times = []
    failed = False
    for index, (suite, suite_start) in enumerate(zip(suites, starts, strict=True)):
        where = f"testsuite {index + 1} ({suite.get('name') or 'unnamed'})"
        t = suite_start if suite_start is not None else start
        suite_time = _seconds(path, suite, where, "time")
        cases_time = 0.0
        for n, case in enumerate(suite.findall("testcase")):
            case_where = f"{where}, testcase {n + 1}"
            name = case.get("name")
            if not name:
                raise UserError(f"{path}: {case_where}: the name attribute is missing")
            duration = _seconds(path, case, case_where, "time") or 0.0
            label = f"{case.get('classname') or suite.get('name') or ''}::{name}"
            status, outcome, message = _result(case)
            failed = failed or outcome == "failed"
            ran = status != "skipped"
            rows.append([label, "junit", status, t if ran else None, t + duration if ran else None,
                         duration if ran else None, (1 if outcome == "failed" else 0) if ran else None,
                         outcome, message])
            if ran:
                t += duration
                cases_time += duration
        suite_times.append(suite_time if suite_time is not None else cases_time)

    total = _seconds(path, root, "testsuites", "time") if root.tag == "testsuites" else None
    duration = total if total is not None else sum(suite_times)
    invocation = {
        "uuid": "junit:" + hashlib.sha256(data).hexdigest()[:32],
        "command": "test",
        "patterns": [str(path.name)],
        "started_at": start,
        "finished_at": start + duration,
        "duration_s": duration,
        "exit_code": 1 if failed else 0,
        "workspace": "",
        "hostname": next((s.get("hostname") for s in suites if s.get("hostname")), None),
        "git_branch": branch,
        "git_commit": commit,
        "source": "junit",
        "baseline": int(baseline),
    }
    return {"v": FORMAT_VERSION, "invocation": invocation, "actions": {"columns": _ACTION_COLUMNS, "rows": rows}}


def _result(case: ET.Element) -> tuple[str, str | None, str | None]:
    """(status, test_outcome, message) of one testcase."""
    for tag in ("failure", "error"):
        el = case.find(tag)
        if el is not None:
            return "failed", "failed", (el.get("message") or tag)[:500]
    el = case.find("skipped")
    if el is not None:
        return "skipped", None, (el.get("message") or "skipped")[:500]
    return "executed", "passed", None


def _seconds(path: Path, el: ET.Element, where: str, attr: str) -> float | None:
    raw = el.get(attr)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw.replace(",", ""))  # some reporters write 1,234.5
    except ValueError:
        raise UserError(f"{path}: {where}: {attr}={raw!r} is not a number of seconds") from None
    if value < 0 or not math.isfinite(value):
        raise UserError(f"{path}: {where}: {attr}={raw!r} is not a number of seconds >= 0")
    return value


def _timestamp(path: Path, suite: ET.Element) -> float | None:
    raw = suite.get("timestamp")
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise UserError(f"{path}: testsuite {suite.get('name') or 'unnamed'}: timestamp={raw!r} is not "
                        "an ISO 8601 date and time (2024-05-01T10:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
