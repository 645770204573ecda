"""JUnit XML for test runs: one <testcase> per test target, as Bazel reports them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from ciopt.exec.engine import ActionOutcome, log_tail
from ciopt.graph.label import Label


def write_junit(path: Path, tests: list[Label], outcomes: dict[Label, ActionOutcome], elapsed_s: float) -> None:
    suite = ET.Element("testsuite", name="ciopt", tests=str(len(tests)), time=f"{elapsed_s:.3f}")
    failures = errors = skipped = 0
    for label in tests:
        o = outcomes.get(label)
        classname = label.package.replace("/", ".") or "root"
        case = ET.SubElement(suite, "testcase", classname=classname, name=str(label),
                             time=f"{o.duration_s if o else 0.0:.3f}")
        if o is None or o.test_outcome is None:
            skipped += 1
            ET.SubElement(case, "skipped", message=(o.message if o else "") or "not run")
            continue
        props = ET.SubElement(case, "properties")
        ET.SubElement(props, "property", name="status", value=o.status)
        ET.SubElement(props, "property", name="attempts", value=str(o.attempts))
        ET.SubElement(props, "property", name="outcome", value=o.test_outcome)
        if o.test_outcome in ("failed", "timeout"):
            failures += 1
            fail = ET.SubElement(case, "failure", message=o.message or o.test_outcome, type=o.test_outcome)
            fail.text = log_tail(o.log, 200)
        elif o.test_outcome == "flaky":
            # Passed on a retry: green, but visible to anyone reading the report.
            flaky = ET.SubElement(case, "system-err")
            flaky.text = f"FLAKY: failed {o.attempts - 1} time(s) before passing\n" + log_tail(o.log, 50)
        out = ET.SubElement(case, "system-out")
        out.text = log_tail(o.log, 200) if o.test_outcome != "flaky" else ""
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", str(skipped))
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
