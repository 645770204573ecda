"""`ciopt test` through the real command line: caching of passes, flaky retries, JUnit, timeouts.

Test sources append a line to a counter file at an absolute path (passed through the `env`
attribute), so each test knows how often it really ran, whatever the report says.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from buildws import (action, cli_store, lines, make_workspace, pid_alive, row_of_test, run_json, statuses,
                     wait_for)
from conftest import CliRunner

COUNTING_TEST = """
    import os

    def test_counts():
        with open(os.environ["COUNTER"], "a") as f:
            f.write("run\\n")
        assert {expr}
"""

# Fails on its first run, passes on every later one.
FLAKY_TEST = """
    import os

    def test_flaky():
        path = os.environ["COUNTER"]
        before = len(open(path).read().splitlines()) if os.path.exists(path) else 0
        with open(path, "a") as f:
            f.write("run\\n")
        assert before >= 1, "first run fails"
"""


def py_test_build(name: str, counter: Path, extra: str = "") -> str:
    return f'py_test(name = "{name}", srcs = ["{name}.py"], env = {{"COUNTER": "{counter}"}}{extra})\n'


def failing_and_passing(tmp_path: Path, bad_expr: str, more: dict[str, str] | None = None) -> Path:
    """A workspace with //a:test_bad, asserting `bad_expr`, and //a:test_ok (plus `more` files)."""
    ok, bad = tmp_path / "ok.count", tmp_path / "bad.count"
    return make_workspace(tmp_path, {
        "a/BUILD": py_test_build("test_bad", bad) + py_test_build("test_ok", ok),
        "a/test_bad.py": COUNTING_TEST.format(expr=bad_expr),
        "a/test_ok.py": COUNTING_TEST.format(expr="True"),
        **(more or {}),
    })


def one_py_test(tmp_path: Path, name: str, source: str, extra: str = "") -> tuple[Path, Path]:
    """A workspace whose only target is the py_test //t:NAME; returns it and the file counting its runs."""
    counter = tmp_path / f"{name}.count"
    return make_workspace(tmp_path, {"t/BUILD": py_test_build(name, counter, extra), f"t/{name}.py": source}), counter


def test_passing_py_test_is_cached(cli: CliRunner, tmp_path: Path) -> None:
    ws, counter = one_py_test(tmp_path, "test_ok", COUNTING_TEST.format(expr="1 + 1 == 2"))
    first = run_json(cli, ws, "test", "//...")
    t = row_of_test(first, "//t:test_ok")
    assert (t["outcome"], t["status"], t["cached"], t["attempts"]) == ("passed", "executed", False, 1)
    assert first["summary"]["tests"]["passed"] == 1 and first["summary"]["tests"]["cached"] == 0
    log = Path(t["log"])
    assert log.is_file() and "1 passed" in log.read_text()
    assert lines(counter) == ["run"]

    second = run_json(cli, ws, "test", "//...")
    t = row_of_test(second, "//t:test_ok")
    assert (t["outcome"], t["status"], t["cached"]) == ("passed", "cached_local", True)
    assert action(second, "//t:test_ok")["key"] == action(first, "//t:test_ok")["key"]
    assert second["summary"]["tests"]["cached"] == 1 and second["summary"]["executed"] == 0
    assert lines(counter) == ["run"], "a cached pass was run again"
    assert "1 passed" in Path(t["log"]).read_text(), "the cached test log was not restored"


def test_cached_test_log_is_restored_after_deleting_ciopt_out(cli: CliRunner, tmp_path: Path) -> None:
    ws, counter = one_py_test(tmp_path, "test_ok", COUNTING_TEST.format(expr="True"))
    run_json(cli, ws, "test", "//t:test_ok")
    import shutil

    shutil.rmtree(ws / "ciopt-out")
    doc = run_json(cli, ws, "test", "//t:test_ok")
    t = row_of_test(doc, "//t:test_ok")
    assert t["status"] == "cached_local"
    assert "1 passed" in Path(t["log"]).read_text()
    assert lines(counter) == ["run"]


def test_editing_a_test_or_its_data_reruns_it(cli: CliRunner, tmp_path: Path) -> None:
    counter = tmp_path / "c.count"
    ws = make_workspace(tmp_path, {
        "t/BUILD": py_test_build("test_data", counter, ', data = ["expected.txt"], deps = [":lib"]')
        + 'py_library(name = "lib", srcs = ["lib.py"])\n',
        "t/lib.py": "VALUE = 'a'\n",
        "t/expected.txt": "a",
        "t/test_data.py": COUNTING_TEST.format(
            expr="open('t/expected.txt').read() == __import__('t.lib', fromlist=['VALUE']).VALUE"),
        "t/__init__.py": "",
        "other/BUILD": 'py_library(name = "unrelated", srcs = ["u.py"])\n',
        "other/u.py": "",
    })
    assert row_of_test(run_json(cli, ws, "test", "//..."), "//t:test_data")["status"] == "executed"
    (ws / "other/u.py").write_text("X = 1\n")
    assert row_of_test(run_json(cli, ws, "test", "//..."), "//t:test_data")["status"] == "cached_local"
    (ws / "t/expected.txt").write_text("b")
    doc = run_json(cli, ws, "test", "//...", expect=1)
    assert row_of_test(doc, "//t:test_data")["outcome"] == "failed"
    (ws / "t/lib.py").write_text("VALUE = 'b'\n")
    doc = run_json(cli, ws, "test", "//...")
    assert row_of_test(doc, "//t:test_data")["status"] == "executed"
    assert len(lines(counter)) == 3


def test_failing_py_test_is_not_cached(cli: CliRunner, tmp_path: Path) -> None:
    ws, counter = one_py_test(tmp_path, "test_bad", COUNTING_TEST.format(expr="1 + 1 == 3"))
    for run in (1, 2):
        doc = run_json(cli, ws, "test", "//...", expect=1)
        t = row_of_test(doc, "//t:test_bad")
        assert (t["outcome"], t["status"], t["cached"]) == ("failed", "failed", False)
        assert doc["summary"]["tests"]["failed"] == 1 and doc["summary"]["exit_code"] == 1
        assert lines(counter) == ["run"] * run
    assert "FAILED //t:test_bad" in doc["_stderr"]
    assert "assert" in Path(t["log"]).read_text()


def test_one_failing_test_does_not_stop_the_others(cli: CliRunner, tmp_path: Path) -> None:
    ok, bad = tmp_path / "ok.count", tmp_path / "bad.count"
    ws = make_workspace(tmp_path, {
        "a/BUILD": py_test_build("test_bad", bad),
        "a/test_bad.py": COUNTING_TEST.format(expr="False"),
        "b/BUILD": py_test_build("test_ok", ok),
        "b/test_ok.py": COUNTING_TEST.format(expr="True"),
    })
    doc = run_json(cli, ws, "test", "//...", "-j", "1", expect=1)
    assert {t["label"]: t["outcome"] for t in doc["tests"]} == {"//a:test_bad": "failed", "//b:test_ok": "passed"}
    assert lines(ok) == ["run"] and lines(bad) == ["run"]


def test_flaky_test_is_reported_flaky_and_not_cached(cli: CliRunner, tmp_path: Path) -> None:
    ws, counter = one_py_test(tmp_path, "test_flaky", FLAKY_TEST)
    junit = tmp_path / "junit.xml"
    doc = run_json(cli, ws, "test", "//...", "--flaky-attempts", "3", "--junit", str(junit))
    t = row_of_test(doc, "//t:test_flaky")
    assert (t["outcome"], t["status"], t["attempts"]) == ("flaky", "executed", 2)
    [case] = list(ET.parse(junit).getroot().iter("testcase"))
    assert case.find("failure") is None, "a flaky pass is green"
    assert "FLAKY" in ET.tostring(case, encoding="unicode"), "...but visibly flaky in the report"
    assert doc["summary"]["tests"]["flaky"] == 1 and doc["summary"]["exit_code"] == 0
    assert "FLAKY //t:test_flaky" in doc["_stderr"]
    assert lines(counter) == ["run", "run"]

    # A flaky pass was not cached as clean: the next run executes the test again.
    doc = run_json(cli, ws, "test", "//...", "--flaky-attempts", "3")
    t = row_of_test(doc, "//t:test_flaky")
    assert (t["outcome"], t["status"]) == ("passed", "executed")
    assert len(lines(counter)) == 3
    # That clean pass is cached.
    doc = run_json(cli, ws, "test", "//...", "--flaky-attempts", "3")
    assert row_of_test(doc, "//t:test_flaky")["status"] == "cached_local"
    assert len(lines(counter)) == 3


def test_flaky_test_without_retries_fails(cli: CliRunner, tmp_path: Path) -> None:
    ws, counter = one_py_test(tmp_path, "test_flaky", FLAKY_TEST)
    doc = run_json(cli, ws, "test", "//...", expect=1)
    t = row_of_test(doc, "//t:test_flaky")
    assert (t["outcome"], t["attempts"]) == ("failed", 1)
    assert lines(counter) == ["run"]


def test_flaky_attempts_stop_at_n(cli: CliRunner, tmp_path: Path) -> None:
    ws, counter = one_py_test(tmp_path, "test_bad", COUNTING_TEST.format(expr="False"))
    doc = run_json(cli, ws, "test", "//...", "--flaky-attempts", "3", expect=1)
    t = row_of_test(doc, "//t:test_bad")
    assert (t["outcome"], t["attempts"]) == ("failed", 3)
    assert len(lines(counter)) == 3


def test_flaky_attribute_retries_without_the_flag(cli: CliRunner, tmp_path: Path) -> None:
    ws, _ = one_py_test(tmp_path, "test_flaky", FLAKY_TEST, ", flaky = True")
    doc = run_json(cli, ws, "test", "//...")
    assert row_of_test(doc, "//t:test_flaky")["outcome"] == "flaky"


def test_junit_report(cli: CliRunner, tmp_path: Path) -> None:
    ws = failing_and_passing(tmp_path, "'needle' == 'haystack'", {
        "s/BUILD": 'sh_test(name = "smoke", srcs = ["smoke.sh"])\n',
        "s/smoke.sh": "echo smoke ok\n",
    })
    junit = tmp_path / "reports" / "junit.xml"
    run_json(cli, ws, "test", "//...", "--junit", str(junit), expect=1)
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    # A testsuite per target; in it a testcase per pytest test (sh_test: one for the target).
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"//a:test_bad", "//a:test_ok", "//s:smoke"}
    assert suites["//a:test_bad"].get("file") == "a/test_bad.py"
    cases = {(s, c.get("classname"), c.get("name")): c for s, suite in suites.items() for c in suite.findall("testcase")}
    assert set(cases) == {("//a:test_bad", "a.test_bad", "test_counts"), ("//a:test_ok", "a.test_ok", "test_counts"),
                          ("//s:smoke", "s", "//s:smoke")}
    assert int(root.get("tests")) == 3 and int(root.get("failures")) == 1
    failure = cases["//a:test_bad", "a.test_bad", "test_counts"].find("failure")
    assert failure is not None and "needle" in (failure.text or "")
    for key in (("//a:test_ok", "a.test_ok", "test_counts"), ("//s:smoke", "s", "//s:smoke")):
        assert cases[key].find("failure") is None and cases[key].find("error") is None
        assert cases[key].find("skipped") is None
    for case in cases.values():
        assert float(case.get("time")) >= 0

    # A second run with the passes cached still reports every test, per test.
    junit2 = tmp_path / "junit2.xml"
    run_json(cli, ws, "test", "//...", "--junit", str(junit2), expect=1)
    root2 = ET.parse(junit2).getroot()
    cases2 = {(s.get("name"), c.get("classname"), c.get("name")): c for s in root2.findall("testsuite")
              for c in s.findall("testcase")}
    assert set(cases2) == set(cases)
    assert cases2["//a:test_bad", "a.test_bad", "test_counts"].find("failure") is not None
    assert cases2["//a:test_ok", "a.test_ok", "test_counts"].find("failure") is None


def test_junit_marks_tests_skipped_by_a_failed_build(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, {
        "g/BUILD": """
            genrule(name = "gen", outs = ["gen.txt"], cmd = "exit 1")
            sh_test(name = "uses_gen", srcs = ["t.sh"], data = [":gen"])
        """,
        "g/t.sh": "cat g/gen.txt\n",
    })
    junit = tmp_path / "junit.xml"
    doc = run_json(cli, ws, "test", "//g:uses_gen", "--junit", str(junit), expect=1)
    assert statuses(doc) == {"//g:gen": "failed", "//g:uses_gen": "skipped"}
    assert row_of_test(doc, "//g:uses_gen")["outcome"] == "not_run"
    [case] = list(ET.parse(junit).getroot().iter("testcase"))
    assert case.get("name") == "//g:uses_gen"
    assert case.find("skipped") is not None or case.find("failure") is not None or case.find("error") is not None


def test_sh_test_passes_and_fails_by_exit_code(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, {
        "s/BUILD": """
            sh_test(name = "good", srcs = ["good.sh"], data = ["data.txt"])
            sh_test(name = "bad", srcs = ["bad.sh"])
        """,
        "s/good.sh": 'grep -q hello s/data.txt && [ "$TEST_TARGET" = "//s:good" ]\n',
        "s/bad.sh": "echo going down\nexit 7\n",
        "s/data.txt": "hello\n",
    })
    doc = run_json(cli, ws, "test", "//s:all", expect=1)
    assert row_of_test(doc, "//s:good")["outcome"] == "passed"
    bad = row_of_test(doc, "//s:bad")
    assert (bad["outcome"], bad["status"]) == ("failed", "failed")
    assert action(doc, "//s:bad")["exit_code"] == 7
    assert "going down" in Path(bad["log"]).read_text()
    doc = run_json(cli, ws, "test", "//s:good")
    assert row_of_test(doc, "//s:good")["status"] == "cached_local"


def test_build_command_does_not_run_tests(cli: CliRunner, tmp_path: Path) -> None:
    counter = tmp_path / "ok.count"
    ws = make_workspace(tmp_path, {
        "t/BUILD": py_test_build("test_ok", counter, ', data = [":gen"]')
        + 'genrule(name = "gen", outs = ["gen.txt"], cmd = "echo g > $@")\n',
        "t/test_ok.py": COUNTING_TEST.format(expr="True"),
    })
    doc = run_json(cli, ws, "build", "//...")
    assert statuses(doc) == {"//t:gen": "executed"}
    assert lines(counter) == []
    assert (ws / "ciopt-out/t/gen.txt").read_text() == "g\n"
    doc = run_json(cli, ws, "test", "//...")
    assert statuses(doc) == {"//t:gen": "cached_local", "//t:test_ok": "executed"}
    assert lines(counter) == ["run"]


def test_test_suite_selects_its_tests(cli: CliRunner, tmp_path: Path) -> None:
    one, two = tmp_path / "one.count", tmp_path / "two.count"
    ws = make_workspace(tmp_path, {
        "t/BUILD": py_test_build("test_one", one) + py_test_build("test_two", two)
        + 'test_suite(name = "only_one", tests = [":test_one"])\n',
        "t/test_one.py": COUNTING_TEST.format(expr="True"),
        "t/test_two.py": COUNTING_TEST.format(expr="True"),
    })
    doc = run_json(cli, ws, "test", "//t:only_one")
    assert [t["label"] for t in doc["tests"]] == ["//t:test_one"]
    assert lines(one) == ["run"] and lines(two) == []


def test_timeout_kills_the_whole_process_group(cli: CliRunner, tmp_path: Path) -> None:
    pid_file = tmp_path / "bg.pid"
    ws = make_workspace(tmp_path, {
        "s/BUILD": f'sh_test(name = "slow", srcs = ["slow.sh"], timeout = 1, env = {{"PIDFILE": "{pid_file}"}})\n',
        "s/slow.sh": 'sleep 300 &\necho $! > "$PIDFILE"\nsleep 30\n',
    })
    children: list[int] = []
    try:
        for run in (1, 2):  # a timed-out test is not cached: the second run times out again
            pid_file.unlink(missing_ok=True)
            doc = run_json(cli, ws, "test", "//...", expect=1)
            children.append(int(pid_file.read_text()))
            t = row_of_test(doc, "//s:slow")
            assert (t["outcome"], t["status"]) == ("timeout", "failed")
            assert "timed out" in (action(doc, "//s:slow")["message"] or "")
            assert doc["summary"]["tests"]["timeout"] == 1
            assert wait_for(lambda: not pid_alive(children[-1]), 10), \
                "the test's background child survived the timeout"
    finally:
        for pid in children:
            if pid_alive(pid):
                os.kill(pid, 9)


def test_test_records(cli: CliRunner, tmp_path: Path) -> None:
    from ciopt.analytics.records import actions_of, recent_invocations

    ws = failing_and_passing(tmp_path, "False")
    run_json(cli, ws, "test", "//...", expect=1)
    run_json(cli, ws, "test", "//...", expect=1)
    db = cli_store(tmp_path) / "records.sqlite"
    newest, oldest = recent_invocations(db)
    assert newest["command"] == "test" and newest["exit_code"] == 1
    assert (oldest["tests_passed"], oldest["tests_failed"], oldest["tests_cached"]) == (1, 1, 0)
    assert (newest["tests_passed"], newest["tests_failed"], newest["tests_cached"]) == (1, 1, 1)
    rows = {r["label"]: r for r in actions_of(db, int(newest["id"]))}
    assert rows["//a:test_ok"]["test_outcome"] == "passed" and rows["//a:test_ok"]["status"] == "cached_local"
    assert rows["//a:test_bad"]["test_outcome"] == "failed" and rows["//a:test_bad"]["status"] == "failed"


def test_bad_flaky_attempts_is_a_usage_error(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, {"t/BUILD": ""})
    proc = cli("test", "//...", "--flaky-attempts", "0", cwd=ws)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_bypass_runs_cached_tests_again(cli: CliRunner, tmp_path: Path) -> None:
    ws, counter = one_py_test(tmp_path, "test_ok", COUNTING_TEST.format(expr="True"))
    run_json(cli, ws, "test", "//...")
    doc = run_json(cli, ws, "test", "//...", env={"CIOPT_DISABLE": "1"})
    t = row_of_test(doc, "//t:test_ok")
    assert (t["outcome"], t["status"]) == ("passed", "executed")
    assert doc["summary"]["bypass"] is True
    assert lines(counter) == ["run", "run"]


def test_py_test_runs_with_the_active_virtualenv(cli: CliRunner, tmp_path: Path) -> None:
    """With ciopt installed in the project's own venv and that venv active, tests see its packages
    (the venv's python, not the base interpreter it links to)."""
    import sys

    ws = make_workspace(tmp_path, {
        "t/BUILD": 'py_test(name = "test_env", srcs = ["test_env.py"])\n',
        # msgpack is a dependency of ciopt, so it is installed wherever ciopt runs.
        "t/test_env.py": f"""
            import sys

            def test_env():
                import msgpack  # noqa: F401
                assert sys.prefix == {sys.prefix!r}
        """,
    })
    doc = run_json(cli, ws, "test", "//...", expect=None, env={"VIRTUAL_ENV": sys.prefix})
    t = row_of_test(doc, "//t:test_env")
    assert t["outcome"] == "passed", Path(t["log"]).read_text()
