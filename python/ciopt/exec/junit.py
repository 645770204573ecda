"""JUnit XML for test runs: a <testsuite> per test target, a <testcase> per test in it.

py_test targets carry per-test results from the pytest plugin (run now or cached), so each
pytest test is its own <testcase> (classname and name split from the node id, as pytest's
own --junitxml does). Targets without per-test results (sh_test, tests that did not run)
get one <testcase> for the whole target, as Bazel reports them. Tests left out by selection
are <skipped> with the reason.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

from ciopt.exec.engine import ActionOutcome, log_tail

if TYPE_CHECKING:
    from ciopt.exec.build_result import BuildResult


def _split_nodeid(nodeid: str) -> tuple[str, str]:
    """`tests/test_a.py::TestX::test_y[1]` -> (`tests.test_a.TestX`, `test_y[1]`)."""
    parts = nodeid.split("::")
    module = parts[0].removesuffix(".py").replace("/", ".")
    return ".".join([module, *parts[1:-1]]), parts[-1] if len(parts) > 1 else parts[0]


def _whole_target_case(suite: ET.Element, label: str, o: ActionOutcome | None, counts: dict[str, int]) -> None:
    case = ET.SubElement(suite, "testcase", classname=label.split(":")[0].lstrip("/").replace("/", ".") or "root",
                         name=label, time=f"{o.duration_s if o else 0.0:.3f}")
    if o is None or o.test_outcome is None:
        counts["skipped"] += 1
        ET.SubElement(case, "skipped", message=(o.message if o else "") or "not run")
        return
    if o.test_outcome in ("failed", "timeout"):
        counts["failures"] += 1
        fail = ET.SubElement(case, "failure", message=o.message or o.test_outcome, type=o.test_outcome)
        fail.text = log_tail(o.log, 200)
    elif o.test_outcome == "flaky":
        # Passed on a retry: green, but visible to anyone reading the report.
        flaky = ET.SubElement(case, "system-err")
        flaky.text = f"FLAKY: failed {o.attempts - 1} time(s) before passing\n" + log_tail(o.log, 50)
    else:
        out = ET.SubElement(case, "system-out")
        out.text = log_tail(o.log, 200)


def write_junit(path: Path, result: BuildResult) -> None:
    root = ET.Element("testsuites", name="ciopt", time=f"{result.finished_at - result.started_at:.3f}")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for label in result.tests:
        o = result.outcomes.get(label)
        files = result.test_files.get(label, ())
        suite = ET.SubElement(root, "testsuite", name=str(label), time=f"{o.duration_s if o else 0.0:.3f}")
        if files:
            suite.set("file", " ".join(files))
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if o is not None:
            props = ET.SubElement(suite, "properties")
            ET.SubElement(props, "property", name="status", value=o.status)
            ET.SubElement(props, "property", name="attempts", value=str(o.attempts))
            ET.SubElement(props, "property", name="outcome", value=o.test_outcome or o.status)
            for note in o.notes:
                ET.SubElement(props, "property", name="note", value=note)
        if o is not None and o.status == "skipped_unaffected":
            case = ET.SubElement(suite, "testcase", classname=str(label), name=str(label), time="0.000")
            ET.SubElement(case, "skipped", type="skipped_unaffected", message=o.message or "unaffected")
            counts["tests"] += 1
            counts["skipped"] += 1
        elif o is not None and o.cases:
            for c in o.cases:
                classname, name = _split_nodeid(str(c["nodeid"]))
                case = ET.SubElement(suite, "testcase", classname=classname, name=name,
                                     time=f"{float(c.get('duration_s', 0.0)):.3f}")  # type: ignore[arg-type]
                counts["tests"] += 1
                outcome = c.get("outcome")
                if outcome == "failed":
                    counts["failures"] += 1
                    ET.SubElement(case, "failure", message=f"{c['nodeid']} failed").text = log_tail(o.log, 200)
                elif outcome == "error":
                    counts["errors"] += 1
                    ET.SubElement(case, "error", message=f"{c['nodeid']}: error in setup or teardown")
                elif outcome in ("skipped", "xfailed"):
                    counts["skipped"] += 1
                    ET.SubElement(case, "skipped", type=str(outcome), message=str(outcome))
                if o.test_outcome == "flaky":
                    # Passed on a retry: green, but visible to anyone reading the report.
                    ET.SubElement(case, "system-err").text = (f"FLAKY: {o.label} failed {o.attempts - 1} time(s) "
                                                              "before passing")
        else:
            counts["tests"] += 1
            _whole_target_case(suite, str(label), o, counts)
        for k, v in counts.items():
            suite.set(k, str(v))
            totals[k] += v
    for k, v in totals.items():
        root.set(k, str(v))
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


__all__ = ["write_junit"]
