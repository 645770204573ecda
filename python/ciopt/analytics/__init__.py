"""Build analytics: BuildRecords of every invocation (SQLite), and the reports built on them.

`records.py` writes and reads the database, `<store dir>/records.sqlite` unless
`analytics.path` says otherwise; see its docstring for the schema. Built on it (issue 13,
docs/analytics.md): `rollup.py` (per-target figures by day), `exchange.py` (record documents
and merging them), `publish.py` + `stream.py` (the push to the shared Redis) and `pull.py`,
`import_junit.py` / `import_github.py` (CI history), `metrics.py` (every figure),
`report.py` and `dashboard.py` (+ templates/dashboard.html).
"""

from ciopt.analytics.records import (
    NO_INVOCATION,
    SCHEMA_VERSION,
    ActionRecord,
    RecordWriter,
    actions_of,
    critical_path,
    prune,
    recent_invocations,
)

__all__ = [
    "NO_INVOCATION",
    "SCHEMA_VERSION",
    "ActionRecord",
    "RecordWriter",
    "actions_of",
    "critical_path",
    "prune",
    "recent_invocations",
]
