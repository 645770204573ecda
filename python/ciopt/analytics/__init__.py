"""Build analytics: BuildRecords of every invocation (SQLite), and later the reports built on them.

`records.py` writes and reads the database, `<store dir>/records.sqlite` unless
`analytics.path` says otherwise; see its docstring for the schema.
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
