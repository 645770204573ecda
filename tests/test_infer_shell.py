"""Shell `source` / `.` resolution."""

from __future__ import annotations

from ciopt import _native
from ciopt.infer.shell import resolve_shell

FILES = frozenset({
    "scripts/run.sh",
    "scripts/lib.sh",
    "scripts/sub/helper.sh",
    "common/env.sh",
    "lib.sh",
})


def test_relative_to_script_dir() -> None:
    assert resolve_shell("scripts/run.sh", "sub/helper.sh", FILES) == ["scripts/sub/helper.sh"]
    assert resolve_shell("scripts/run.sh", "./sub/helper.sh", FILES) == ["scripts/sub/helper.sh"]
    assert resolve_shell("scripts/sub/helper.sh", "../lib.sh", FILES) == ["scripts/lib.sh"]


def test_falls_back_to_workspace_root() -> None:
    assert resolve_shell("scripts/run.sh", "common/env.sh", FILES) == ["common/env.sh"]


def test_both_readings_when_both_exist() -> None:
    # bash reads it relative to the caller's working directory, which is either
    assert resolve_shell("scripts/run.sh", "lib.sh", FILES) == ["scripts/lib.sh", "lib.sh"]


def test_quotes_are_stripped() -> None:
    assert resolve_shell("scripts/run.sh", '"common/env.sh"', FILES) == ["common/env.sh"]
    assert resolve_shell("scripts/run.sh", "'sub/helper.sh'", FILES) == ["scripts/sub/helper.sh"]


def test_dynamic_absolute_missing_and_outside() -> None:
    assert resolve_shell("scripts/run.sh", '$(dirname "$0")/lib.sh', FILES) == []
    assert resolve_shell("scripts/run.sh", "${BASH_SOURCE%/*}/lib.sh", FILES) == []
    assert resolve_shell("scripts/run.sh", "~/.bashrc", FILES) == []
    assert resolve_shell("scripts/run.sh", "/etc/profile", FILES) == []
    assert resolve_shell("scripts/run.sh", "nothere.sh", FILES) == []
    assert resolve_shell("scripts/run.sh", "../../outside.sh", FILES) == []
    assert resolve_shell("scripts/run.sh", "", FILES) == []


def test_with_extracted_sources() -> None:
    src = b'#!/bin/bash\nsource ./lib.sh\n. common/env.sh\nsource "$(dirname "$0")/sub/helper.sh"\n'
    imports = _native.extract_imports_source(src, "bash")
    resolved = [f for spec, _, _, _, flags in imports if not flags & _native.IMPORT_UNRESOLVED
                for f in resolve_shell("scripts/run.sh", spec, FILES)]
    # "./lib.sh" is relative to the working directory: the script's or the root
    assert resolved == ["scripts/lib.sh", "lib.sh", "common/env.sh"]
    assert [line for _, _, _, line, flags in imports if flags & _native.IMPORT_UNRESOLVED] == [4]
