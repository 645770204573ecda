import json
import textwrap
from pathlib import Path

import pytest

from ciopt.config import CONFIG_RELPATH, ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
FILE = "config/ci-optimization.yaml"


def write(root: Path, text: str) -> Path:
    path = root / CONFIG_RELPATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"XDG_CACHE_HOME": str(tmp_path / "xdg"), **extra}


def error_for(tmp_path: Path, text: str, **env: str) -> ConfigError:
    write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env_for(tmp_path, **env))
    return info.value


# --- defaults ---------------------------------------------------------------


def test_missing_file_means_every_optimization_off(tmp_path: Path) -> None:
    config = load_config(tmp_path, env_for(tmp_path))
    assert config.file is None
    assert config.enabled is False
    assert config.bypass is False and config.bypass_reason is None
    assert not (config.use_remote_cache or config.use_selection or config.use_remote_execution)
    assert not config.record_analytics
    assert config.use_local_cache
    assert config.cache.local.path == tmp_path / "xdg" / "ciopt"
    assert config.cache.local.max_size == 20 * 1024**3
    assert config.cache.remote.url is None and config.cache.remote.backend is None
    assert config.remote_execution.retries == 3
    assert config.degradation == "fallback"
    assert config.execution.jobs is None and config.execution.flaky_attempts == 1
    assert config.analytics.path == tmp_path / "xdg" / "ciopt" / "records.sqlite"
    assert set(config.sources.values()) == {"default"}
    assert set(config.sources) == set(config.flat())
    json.dumps(config.flat())  # `config show --output json` must be able to print it


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    write(tmp_path, "# nothing here\n")
    config = load_config(tmp_path, env_for(tmp_path))
    assert config.file == tmp_path / CONFIG_RELPATH
    assert config == load_config(tmp_path / "elsewhere", env_for(tmp_path))


def test_shipped_default_file_loads_and_states_every_default(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    shipped = load_config(REPO_ROOT, env)
    assert shipped.flat() == load_config(tmp_path, env).flat()
    # "Showing every key": each value must come from a line of the file.
    missing = [k for k, source in shipped.sources.items() if not source.startswith(FILE + ":")]
    assert missing == []


# --- values and sources -----------------------------------------------------


def test_values_and_their_lines(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
        enabled: true
        cache:
          local:
            path: .cache/store
            max_size: 512MiB
          remote:
            url: redis://cache:6379/0
            read_only: true
        selection:
          enabled: true
          global_inputs: [WORKSPACE, "tools/**"]
        remote_execution:
          enabled: true
          scheduler: tcp://sched:5555
        hardware:
          costs: {cpu: 0.1, gpu-a100: 3}
        degradation: fail
        execution:
          jobs: 8
          flaky_attempts: 3
        """,
    )
    config = load_config(tmp_path, env_for(tmp_path))
    assert config.enabled and config.use_remote_cache and config.use_selection and config.use_remote_execution
    assert config.cache.local.path == tmp_path / ".cache/store"
    assert config.cache.local.max_size == 512 * 1024**2
    assert config.cache.remote.backend == "redis"  # from the url scheme
    assert config.cache.remote.read_only is True
    assert config.selection.global_inputs == ("WORKSPACE", "tools/**")
    assert dict(config.hardware.costs) == {"cpu": 0.1, "gpu-a100": 3.0}
    assert config.degradation == "fail"
    assert config.execution.jobs == 8 and config.execution.flaky_attempts == 3
    assert config.sources["enabled"] == f"{FILE}:1"
    assert config.sources["cache.local.max_size"] == f"{FILE}:5"
    assert config.sources["cache.remote.url"] == f"{FILE}:7"
    assert config.sources["execution.flaky_attempts"] == f"{FILE}:20"
    assert config.sources["analytics.enabled"] == "default"


# --- errors: every one names file, line, column and key ------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    e = error_for(tmp_path, "enabled: false\n# comment\n\nchache:\n  local: {}\n")
    assert str(e) == f"{FILE}:4:1: unknown key 'chache' (did you mean 'cache'?)"
    assert (e.file, e.line, e.column, e.key) == (FILE, 4, 1, "chache")


def test_unknown_nested_key(tmp_path: Path) -> None:
    e = error_for(tmp_path, "cache:\n  remote:\n    timeout: 3\n")
    assert str(e) == f"{FILE}:3:5: unknown key 'cache.remote.timeout' (did you mean 'cache.remote.timeout_s'?)"
    assert e.key == "cache.remote.timeout"


def test_right_key_at_the_wrong_level(tmp_path: Path) -> None:
    e = error_for(tmp_path, "jobs: 4\n")
    assert str(e) == f"{FILE}:1:1: unknown key 'jobs' (did you mean 'execution.jobs'?)"


def test_bad_enum_value(tmp_path: Path) -> None:
    e = error_for(tmp_path, "cache:\n  remote:\n    backend: memcache\n")
    assert str(e) == f"{FILE}:3:14: cache.remote.backend: expected one of redis, http, got 'memcache'"
    assert (e.line, e.column, e.key) == (3, 14, "cache.remote.backend")


@pytest.mark.parametrize(
    "text, line, column, key, problem",
    [
        ("enabled: maybe\n", 1, 10, "enabled", "expected true or false, got 'maybe'"),
        ("enabled: 1\n", 1, 10, "enabled", "expected true or false, got 1"),
        ("execution:\n  jobs: 0\n", 2, 9, "execution.jobs", "expected an integer >= 1 or null, got 0"),
        ("execution:\n  jobs: four\n", 2, 9, "execution.jobs", "got 'four'"),
        ("remote_execution:\n  retries: -1\n", 2, 12, "remote_execution.retries", "expected an integer >= 0, got -1"),
        ("cache:\n  remote:\n    timeout_s: 0\n", 3, 16, "cache.remote.timeout_s", "expected a number of seconds > 0"),
        ("cache:\n  local:\n    max_size: 20 parsecs\n", 3, 15, "cache.local.max_size", "invalid size '20 parsecs'"),
        ("cache: [1, 2]\n", 1, 8, "cache", "cache: expected a mapping, got a list"),
        ("cache:\n  local: yes\n", 2, 10, "cache.local", "expected a mapping, got yes"),
        ("selection:\n  global_inputs: '*.lock'\n", 2, 18, "selection.global_inputs", "expected a list of glob patterns"),
        ("selection:\n  global_inputs:\n    - a\n    - 3\n", 4, 7, "selection.global_inputs", "expected a glob pattern string, got 3"),
        ("hardware:\n  costs:\n    cpu: 1\n    gpu: -2\n", 4, 10, "hardware.costs", "gpu: expected a cost >= 0, got -2"),
        ("degradation: ignore\n", 1, 14, "degradation", "expected one of fallback, fail, got 'ignore'"),
        ("cache:\n  remote:\n    url: ftp://x\n", 3, 10, "cache.remote.url", "expected a URL starting with"),
    ],
)
def test_wrong_values(tmp_path: Path, text: str, line: int, column: int, key: str, problem: str) -> None:
    e = error_for(tmp_path, text)
    assert (e.file, e.line, e.column, e.key) == (FILE, line, column, key)
    assert str(e).startswith(f"{FILE}:{line}:{column}: {key}: ")
    assert problem in str(e)


def test_duplicate_key(tmp_path: Path) -> None:
    e = error_for(tmp_path, "enabled: true\nenabled: false\n")
    assert str(e) == f"{FILE}:2:1: duplicate key 'enabled' (first at line 1)"


def test_yaml_syntax_error_has_a_position(tmp_path: Path) -> None:
    e = error_for(tmp_path, "cache:\n  local: [1, 2\nenabled: true\n")
    assert e.file == FILE and e.line is not None and e.column is not None
    assert str(e).startswith(f"{FILE}:{e.line}:{e.column}: invalid YAML: ")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    e = error_for(tmp_path, "- enabled\n")
    assert str(e) == f"{FILE}:1:1: top level: expected a mapping, got a list"


def test_remote_execution_needs_a_scheduler(tmp_path: Path) -> None:
    e = error_for(tmp_path, "remote_execution:\n  enabled: true\n")
    assert (e.line, e.column, e.key) == (2, 12, "remote_execution.enabled")
    assert "needs remote_execution.scheduler" in str(e)


def test_heartbeat_timeout_must_exceed_interval(tmp_path: Path) -> None:
    e = error_for(tmp_path, "remote_execution:\n  heartbeat_s: 10\n  heartbeat_timeout_s: 10\n")
    assert (e.line, e.key) == (3, "remote_execution.heartbeat_timeout_s")
    assert "must be greater than heartbeat_s (10)" in str(e)


def test_backend_must_match_url(tmp_path: Path) -> None:
    e = error_for(tmp_path, "cache:\n  remote:\n    backend: http\n    url: redis://h:1\n")
    assert (e.line, e.key) == (4, "cache.remote.url")


# --- environment and bypass ---------------------------------------------------


def test_bypass_from_env(tmp_path: Path) -> None:
    write(tmp_path, "enabled: true\nselection:\n  enabled: true\n")
    config = load_config(tmp_path, env_for(tmp_path, CIOPT_DISABLE="1"))
    assert config.bypass is True and config.emergency_bypass is True
    assert "CIOPT_DISABLE" in (config.bypass_reason or "")
    assert config.sources["emergency_bypass"] == "env CIOPT_DISABLE"
    assert not config.use_selection and not config.use_local_cache


def test_bypass_from_key(tmp_path: Path) -> None:
    write(tmp_path, "enabled: true\n\nemergency_bypass: true\n")
    config = load_config(tmp_path, env_for(tmp_path))
    assert config.bypass is True
    assert config.bypass_reason == f"emergency_bypass: true in {FILE}:3"
    assert config.sources["emergency_bypass"] == f"{FILE}:3"


@pytest.mark.parametrize("value, bypass", [("1", True), ("yes", True), ("true", True), ("0", False), ("", False), ("off", False)])
def test_bypass_env_values(tmp_path: Path, value: str, bypass: bool) -> None:
    assert load_config(tmp_path, env_for(tmp_path, CIOPT_DISABLE=value)).bypass is bypass


def test_bypass_survives_a_broken_config(tmp_path: Path) -> None:
    write(tmp_path, "chache: {}\n")
    config = load_config(tmp_path, env_for(tmp_path, CIOPT_DISABLE="1"))
    assert config.bypass
    assert len(config.warnings) == 1 and "unknown key 'chache'" in config.warnings[0]


def test_cache_dir_env_overrides_file(tmp_path: Path) -> None:
    write(tmp_path, "cache:\n  local:\n    path: from-file\n")
    config = load_config(tmp_path, env_for(tmp_path, CIOPT_CACHE_DIR=str(tmp_path / "env-store")))
    assert config.cache.local.path == tmp_path / "env-store"
    assert config.sources["cache.local.path"] == "env CIOPT_CACHE_DIR"
    assert config.analytics.path == tmp_path / "env-store" / "records.sqlite"


def test_config_path_from_env(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.yaml"
    other.write_text("\n\ndegradation: fail\n")
    config = load_config(tmp_path / "ws", env_for(tmp_path, CIOPT_CONFIG=str(other)))
    assert config.degradation == "fail"
    assert config.sources["degradation"] == f"{other}:3"


def test_missing_config_named_by_env_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CIOPT_CONFIG") as info:
        load_config(tmp_path, env_for(tmp_path, CIOPT_CONFIG=str(tmp_path / "nope.yaml")))
    assert info.value.key == "CIOPT_CONFIG"


def test_errors_in_a_config_outside_the_workspace_name_its_path(tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("enabled: nope\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "ws", env_for(tmp_path, CIOPT_CONFIG=str(other)))
    assert str(info.value).startswith(f"{other}:1:10: enabled: ")
