"""JS/TS specifier resolution: relative paths, extensions, index files, package.json, tsconfig."""

from __future__ import annotations

from pathlib import Path

import pytest
from buildws import write_files
from ciopt import _native
from ciopt.infer.javascript import (
    TsConfig,
    load_js_packages,
    load_tsconfigs,
    parse_jsonc,
    resolve_js,
    tsconfig_for,
)


def make(root: Path, files: dict[str, str]) -> frozenset[str]:
    """Write the files under `root`; their workspace-relative paths, as the resolver takes them."""
    write_files(root, files)
    return frozenset(files)


FILES = frozenset({
    "web/src/app.ts",
    "web/src/util.ts",
    "web/src/esm.ts",
    "web/src/legacy.js",
    "web/src/legacy.d.ts",
    "web/src/data.json",
    "web/src/comp/Button.tsx",
    "web/src/comp/index.ts",
    "web/src/lib/index.js",
    "web/src/only.d.ts",
    "web/src/mod.mts",
    "web/src/styles.css",
    "web/shared/x.cjs",
})


@pytest.mark.parametrize("spec, expected", [
    ("./util", ["web/src/util.ts"]),
    ("./util.ts", ["web/src/util.ts"]),
    ("./esm.js", ["web/src/esm.ts"]),  # TS ESM: ".js" names the .ts source
    ("./legacy", ["web/src/legacy.d.ts", "web/src/legacy.js"]),  # declarations plus the JS
    ("./legacy.js", ["web/src/legacy.js", "web/src/legacy.d.ts"]),
    ("./data.json", ["web/src/data.json"]),
    ("./comp", ["web/src/comp/index.ts"]),
    ("./comp/", ["web/src/comp/index.ts"]),
    ("./comp/Button", ["web/src/comp/Button.tsx"]),
    ("./lib", ["web/src/lib/index.js"]),
    ("./only", ["web/src/only.d.ts"]),
    ("./mod.mjs", ["web/src/mod.mts"]),
    ("./styles.css", ["web/src/styles.css"]),
    ("./styles.css?inline", ["web/src/styles.css"]),  # bundler query suffix
    ("../shared/x", ["web/shared/x.cjs"]),
    ("../shared/x.cjs", ["web/shared/x.cjs"]),
    ("./missing", []),
    ("../../../outside", []),  # leaves the workspace
    ("react", []),
    ("@scope/pkg/sub", []),
    ("node:fs", []),
    ("https://cdn.example.com/x.js", []),
])
def test_relative_and_external(spec: str, expected: list[str]) -> None:
    assert resolve_js("web/src/app.ts", spec, FILES, None) == expected


@pytest.mark.parametrize("files, importer, spec, expected", [
    pytest.param({"a/index.ts", "a/b/c.ts"}, "a/b/c.ts", "..", ["a/index.ts"], id="dotdot-resolves-directory-index"),
    pytest.param({"a/index.ts", "a/b/c.ts"}, "a/x.ts", ".", ["a/index.ts"], id="dot-resolves-directory-index"),
    pytest.param({"a/x", "a/x.ts", "a/y.ts"}, "a/y.ts", "./x", ["a/x"], id="exact-file-before-extension"),
    pytest.param({"a/x.js", "a/x.ts", "a/y.ts"}, "a/y.ts", "./x", ["a/x.ts"], id="extension-order-prefers-ts"),
])
def test_small_tree(files: set[str], importer: str, spec: str, expected: list[str]) -> None:
    assert resolve_js(importer, spec, frozenset(files), None) == expected


def test_js_spec_with_both_js_and_ts_returns_both() -> None:
    files = frozenset({"a/x.js", "a/x.ts", "a/y.ts"})
    assert sorted(resolve_js("a/y.ts", "./x.js", files, None)) == ["a/x.js", "a/x.ts"]


def test_parse_jsonc_comments_and_trailing_commas() -> None:
    text = """{
      // line comment
      "compilerOptions": {
        /* block
           comment */
        "baseUrl": "./src", // after
        "paths": {"@/*": ["./*",],},
        "url": "http://x//y/*z*/",
      },
    }"""
    data = parse_jsonc(text)
    assert data == {"compilerOptions": {"baseUrl": "./src", "paths": {"@/*": ["./*"]}, "url": "http://x//y/*z*/"}}


def test_tsconfig_paths_and_base_url(tmp_path: Path) -> None:
    files = make(tmp_path, {
        "web/tsconfig.json": """{
            // JSONC
            "compilerOptions": {
                "baseUrl": "src",
                "paths": {
                    "@/*": ["./*"],
                    "@lib/*": ["lib/*", "fallback/*"],
                    "exact": ["util.ts"],
                },
            },
        }""",
        "web/src/app.ts": "",
        "web/src/util.ts": "",
        "web/src/lib/a.ts": "",
        "web/src/fallback/b.ts": "",
        "web/src/deep/x/y.tsx": "",
    })
    configs = load_tsconfigs(tmp_path, files)
    assert set(configs) == {"web"}
    cfg = configs["web"]
    assert cfg == TsConfig(base_dir="web", base_url="web/src", paths={
        "@/*": ["web/src/*"], "@lib/*": ["web/src/lib/*", "web/src/fallback/*"], "exact": ["web/src/util.ts"]})
    importer = "web/src/deep/x/y.tsx"
    assert tsconfig_for(importer, configs) is cfg
    assert tsconfig_for("other/z.ts", configs) is None
    assert resolve_js(importer, "@/util", files, cfg) == ["web/src/util.ts"]
    assert resolve_js(importer, "@lib/a", files, cfg) == ["web/src/lib/a.ts"]
    assert resolve_js(importer, "@lib/b", files, cfg) == ["web/src/fallback/b.ts"]  # second substitution
    assert resolve_js(importer, "exact", files, cfg) == ["web/src/util.ts"]
    assert resolve_js(importer, "util", files, cfg) == ["web/src/util.ts"]  # baseUrl
    assert resolve_js(importer, "react", files, cfg) == []


def test_tsconfig_paths_without_base_url_are_relative_to_config(tmp_path: Path) -> None:
    files = make(tmp_path, {
        "app/tsconfig.json": '{"compilerOptions": {"paths": {"~/*": ["./src/*"]}}}',
        "app/src/m.ts": "",
        "app/src/n/o.ts": "",
    })
    cfg = tsconfig_for("app/src/n/o.ts", load_tsconfigs(tmp_path, files))
    assert cfg is not None and cfg.base_url is None
    assert resolve_js("app/src/n/o.ts", "~/m", files, cfg) == ["app/src/m.ts"]
    assert resolve_js("app/src/n/o.ts", "m", files, cfg) == []  # no baseUrl: bare stays external


def test_longest_prefix_pattern_wins(tmp_path: Path) -> None:
    files = make(tmp_path, {
        "tsconfig.json": '{"compilerOptions": {"baseUrl": ".", "paths": {"@a/*": ["one/*"], "@a/b/*": ["two/*"]}}}',
        "one/b/c.ts": "",
        "two/c.ts": "",
        "x.ts": "",
    })
    cfg = load_tsconfigs(tmp_path, files)[""]
    assert resolve_js("x.ts", "@a/b/c", files, cfg) == ["two/c.ts"]


def test_extends_chain(tmp_path: Path) -> None:
    files = make(tmp_path, {
        "tsconfig.base.json": '{"compilerOptions": {"baseUrl": ".", "paths": {"@shared/*": ["shared/*"]}}}',
        "configs/mid.json": '{"extends": "../tsconfig.base.json", "compilerOptions": {"strict": true}}',
        "apps/web/tsconfig.json": '{"extends": "../../configs/mid", /* no .json */ "compilerOptions": {}}',
        "apps/web/main.ts": "",
        "shared/log.ts": "",
    })
    cfg = tsconfig_for("apps/web/main.ts", load_tsconfigs(tmp_path, files))
    assert cfg is not None
    assert cfg.base_dir == "apps/web" and cfg.base_url == ""
    assert resolve_js("apps/web/main.ts", "@shared/log", files, cfg) == ["shared/log.ts"]


def test_extends_cycle_and_bad_json_do_not_crash(tmp_path: Path) -> None:
    files = make(tmp_path, {
        "a/tsconfig.json": '{"extends": "../b/tsconfig.json", "compilerOptions": {"baseUrl": "."}}',
        "b/tsconfig.json": '{"extends": "../a/tsconfig.json"}',
        "c/tsconfig.json": "{ not json",
    })
    configs = load_tsconfigs(tmp_path, files)
    assert configs["a"].base_url == "a"
    assert configs["b"].base_url == "a"  # inherited, resolved against the declaring config
    assert configs["c"] == TsConfig(base_dir="c", base_url=None, paths={})


def test_tsconfig_preferred_over_jsconfig_and_node_modules_skipped(tmp_path: Path) -> None:
    files = make(tmp_path, {
        "p/tsconfig.json": '{"compilerOptions": {"baseUrl": "ts"}}',
        "p/jsconfig.json": '{"compilerOptions": {"baseUrl": "js"}}',
        "q/jsconfig.json": '{"compilerOptions": {"baseUrl": "."}}',
        "node_modules/x/tsconfig.json": "{}",
    })
    configs = load_tsconfigs(tmp_path, files)
    assert set(configs) == {"p", "q"}
    assert configs["p"].base_url == "p/ts"
    assert configs["q"].base_url == "q"


def test_package_json_entry_and_workspace_names(tmp_path: Path) -> None:
    files = make(tmp_path, {
        "packages/ui/package.json": '{"name": "@acme/ui", "main": "./dist/index.js", "types": "src/main.ts"}',
        "packages/ui/src/main.ts": "",
        "packages/ui/src/button.ts": "",
        "packages/ui/index.ts": "",
        "apps/web/page.ts": "",
    })
    pkgs = load_js_packages(tmp_path, files)
    assert pkgs.by_name["@acme/ui"].entries == ("packages/ui/src/main.ts",)
    # a directory import uses package.json, not index.ts
    assert resolve_js("apps/web/page.ts", "../../packages/ui", files, None, pkgs) == ["packages/ui/src/main.ts"]
    assert resolve_js("apps/web/page.ts", "../../packages/ui", files, None) == ["packages/ui/index.ts"]
    assert resolve_js("apps/web/page.ts", "@acme/ui", files, None, pkgs) == ["packages/ui/src/main.ts"]
    assert resolve_js("apps/web/page.ts", "@acme/ui/src/button", files, None, pkgs) == ["packages/ui/src/button.ts"]
    assert resolve_js("apps/web/page.ts", "@acme/other", files, None, pkgs) == []


def test_with_extracted_imports() -> None:
    """End to end with the extension's extraction: every specifier form resolves."""
    src = b"""
import a from "./util";
export { b } from "./comp";
const c = require("./legacy");
const d = await import("./data.json");
import React from "react";
"""
    imports = _native.extract_imports_source(src, "typescript")
    resolved = sorted({f for spec, _, _, _, flags in imports if not flags & _native.IMPORT_UNRESOLVED
                       for f in resolve_js("web/src/app.ts", spec, FILES, None)})
    assert resolved == ["web/src/comp/index.ts", "web/src/data.json", "web/src/legacy.d.ts",
                        "web/src/legacy.js", "web/src/util.ts"]
