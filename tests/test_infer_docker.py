"""Dockerfile COPY/ADD sources -> workspace files."""

from __future__ import annotations

import pytest
from ciopt.infer.docker import DockerIgnore, dockerfile_deps, is_dockerfile

FILES = frozenset({
    "svc/Dockerfile",
    "svc/app.py",
    "svc/requirements.txt",
    "svc/requirements-dev.txt",
    "svc/src/a.py",
    "svc/src/b.py",
    "svc/src/sub/c.py",
    "svc/src/sub/data.bin",
    "svc/conf/x.yaml",
    "svc/conf/y.yml",
    "svc/dir with space/f.txt",
    "svc/build/out.o",
    "svc/build/keep.txt",
    "svc/node_modules/m/index.js",
    "other/shared.py",
    "top.txt",
})


def deps(text: str, context: str | None = None, ignore: str | None = None,
         files: frozenset[str] = FILES, path: str = "svc/Dockerfile"):
    extra = {}
    if ignore is not None:
        ign_path = f"{context}/.dockerignore" if context else (".dockerignore" if context == "" else "svc/.dockerignore")
        extra[ign_path] = ignore
        files = files | {ign_path}
    return dockerfile_deps(path, text, files, context, read=extra.get if ignore is not None else None)


def test_basic_copy_add_and_stages() -> None:
    d = deps("""# syntax=docker/dockerfile:1
FROM python:3.12 AS base
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

FROM base AS final
ADD app.py /app/
COPY --from=base /usr/lib /usr/lib
COPY --from=ghcr.io/x/y:1 /bin/tool /bin/
""")
    assert d.files == ["svc/app.py", "svc/requirements.txt"]
    assert d.stages == ["base", "final"]
    assert d.unresolved == []


def test_directory_source_takes_everything_under_it() -> None:
    d = deps("FROM x\nCOPY src /app/src\n")
    assert d.files == ["svc/src/a.py", "svc/src/b.py", "svc/src/sub/c.py", "svc/src/sub/data.bin"]


def test_dot_is_whole_context() -> None:
    d = deps("FROM x\nCOPY . /app\n")
    assert d.files == sorted(f for f in FILES if f.startswith("svc/"))


def test_globs_follow_filepath_match() -> None:
    d = deps("FROM x\nCOPY requirements*.txt conf/*.y?ml src/*.py /app/\n")
    # "*" does not cross "/": src/sub/c.py is not matched by src/*.py
    # "*.y?ml" needs one character between "y" and "ml": x.yaml, not y.yml
    assert d.files == ["svc/conf/x.yaml", "svc/requirements-dev.txt", "svc/requirements.txt",
                       "svc/src/a.py", "svc/src/b.py"]
    d = deps("FROM x\nCOPY conf/*.y[a]ml /x/\n")
    assert d.files == ["svc/conf/x.yaml"]


def test_glob_matching_a_directory_takes_its_subtree() -> None:
    d = deps("FROM x\nCOPY src/s* /app/\n")
    assert d.files == ["svc/src/sub/c.py", "svc/src/sub/data.bin"]


def test_json_form_flags_and_quotes() -> None:
    d = deps("""FROM x
COPY --chown=app:app --chmod=644 ["app.py", "dir with space/f.txt", "/dest/"]
COPY --link --chown=1000 "requirements.txt" /r.txt
""")
    assert d.files == ["svc/app.py", "svc/dir with space/f.txt", "svc/requirements.txt"]


def test_continuations_comments_and_heredocs() -> None:
    d = deps("""FROM x
COPY app.py \\
    # a comment inside the continuation is dropped
    requirements.txt \\

    /app/
RUN <<EOF
COPY src /not/an/instruction
EOF
COPY <<-EOT /etc/conf
\tCOPY conf /nope
\tEOT
ADD conf/x.yaml /x
""")
    assert d.files == ["svc/app.py", "svc/conf/x.yaml", "svc/requirements.txt"]


def test_escape_directive_backtick() -> None:
    d = deps("# escape=`\nFROM x\nCOPY app.py `\n  requirements.txt C:\\\\app\\\\\n")
    assert d.files == ["svc/app.py", "svc/requirements.txt"]


def test_remote_add_and_variables_and_missing() -> None:
    d = deps("""FROM x
ARG SRC=src
ADD https://example.com/x.tar.gz /x/
ADD git@github.com:moby/buildkit.git /bk
COPY $SRC /app/
COPY ${SRC}/a.py app.py /app/
COPY nothere.txt /x
""")
    assert d.files == ["svc/app.py"]
    assert d.unresolved == [(5, "$SRC"), (6, "${SRC}/a.py"), (7, "nothere.txt")]


def test_sources_cannot_leave_the_context() -> None:
    d = deps("FROM x\nCOPY ../other/shared.py /x\nCOPY /app.py /y\n")
    # BuildKit cleans "../other/shared.py" to "other/shared.py" inside the context
    assert d.files == ["svc/app.py"]
    assert d.unresolved == [(2, "../other/shared.py")]


def test_context_override() -> None:
    d = deps("FROM x\nCOPY other/shared.py top.txt /x/\n", context="")
    assert d.files == ["other/shared.py", "top.txt"]
    d = deps("FROM x\nCOPY shared.py /x/\n", context="other")
    assert d.files == ["other/shared.py"]


def test_dockerignore_with_negation() -> None:
    d = deps("FROM x\nCOPY . /app\n", ignore="""
# comments and blank lines are skipped
build
!build/keep.txt
**/*.bin
node_modules
/conf/*.yml
""")
    assert "svc/build/out.o" not in d.files
    assert "svc/build/keep.txt" in d.files
    assert "svc/src/sub/data.bin" not in d.files
    assert "svc/node_modules/m/index.js" not in d.files
    assert "svc/conf/y.yml" not in d.files
    assert "svc/conf/x.yaml" in d.files
    assert "svc/.dockerignore" in d.files  # it decides what is sent, so it is an input too


def test_dockerfile_specific_ignore_file_wins() -> None:
    files = FILES | {"svc/Dockerfile.dockerignore", "svc/.dockerignore"}
    texts = {"svc/Dockerfile.dockerignore": "src\n", "svc/.dockerignore": "conf\n"}
    d = dockerfile_deps("svc/Dockerfile", "FROM x\nCOPY src conf /x/\n", files, read=texts.get)
    assert d.files == ["svc/Dockerfile.dockerignore", "svc/conf/x.yaml", "svc/conf/y.yml"]


def test_without_reader_ignore_is_not_applied() -> None:
    files = FILES | {"svc/.dockerignore"}
    d = dockerfile_deps("svc/Dockerfile", "FROM x\nCOPY build /x/\n", files)
    assert d.files == ["svc/build/keep.txt", "svc/build/out.o"]


def test_copy_exclude_flag() -> None:
    # patterns are relative to the directory being copied
    d = deps("FROM x\nCOPY --exclude=**/*.bin --exclude=sub/c.py src /app/\n")
    assert d.files == ["svc/src/a.py", "svc/src/b.py"]
    # "*" stays within one segment: sub/data.bin is still copied (kept: over-including is safe)
    d = deps("FROM x\nCOPY --exclude=*.bin --exclude=a.py src /app/\n")
    assert d.files == ["svc/src/b.py", "svc/src/sub/c.py", "svc/src/sub/data.bin"]
    d = deps("FROM x\nCOPY --exclude=requirements-* requirements*.txt /app/\n")
    assert d.files == ["svc/requirements.txt"]


def test_run_bind_mounts() -> None:
    d = deps("""FROM x
RUN --mount=type=bind,source=requirements.txt,target=/r.txt pip install -r /r.txt
RUN --mount=type=cache,target=/root/.cache --mount=type=bind,from=base,source=/x,target=/y make
RUN --mount=type=secret,id=tok cat /run/secrets/tok
""")
    assert d.files == ["svc/requirements.txt"]


def test_lowercase_instructions_and_platform_flag() -> None:
    d = deps("from --platform=$BUILDPLATFORM golang:1.22 as build\ncopy app.py /x\n")
    assert d.stages == ["build"]
    assert d.files == ["svc/app.py"]


def test_dockerignore_parse_rules() -> None:
    ign = DockerIgnore.parse("*.md\n!README.md\ndocs/**\n**/tmp\n")
    assert ign.excludes("CHANGES.md")
    assert not ign.excludes("README.md")
    assert ign.excludes("docs/a/b.txt")
    assert ign.excludes("x/y/tmp/z")
    assert ign.excludes("tmp")
    assert not ign.excludes("sub/CHANGES.md")  # "*" does not cross "/"


@pytest.mark.parametrize("path, expected", [
    ("Dockerfile", True),
    ("svc/Dockerfile", True),
    ("svc/Dockerfile.prod", True),
    ("svc/api.dockerfile", True),
    ("Containerfile", True),
    ("svc/Dockerfile.dockerignore", False),
    ("svc/.dockerignore", False),
    ("svc/dockerfile_utils.py", False),
    ("docs/Dockerfiles.md", False),
])
def test_is_dockerfile(path: str, expected: bool) -> None:
    assert is_dockerfile(path) is expected
