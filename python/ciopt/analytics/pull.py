"""`ciopt analytics pull`: merge the records every runner pushed (stream.py) into a local SQLite.

Each source remembers the last stream entry merged (table `pulls`), so a pull reads only what
is new; every record is deduplicated by its invocation uuid all the same, so pulling twice,
or from two servers that hold the same records, adds each invocation once. Records older than
`analytics.retention_days` are not merged, and the local database is pruned to it afterwards.
An entry this ciopt cannot read (garbled, a newer format) is counted and skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ciopt.analytics import exchange, records
from ciopt.analytics.stream import RecordStream

__all__ = ["PullResult", "pull_from"]


@dataclass
class PullResult:
    source: str
    entries: int = 0
    invalid: int = 0
    merged: exchange.MergeResult = field(default_factory=exchange.MergeResult)
    problems: list[str] = field(default_factory=list)  # the first few unreadable entries, why

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "entries": self.entries, "invalid": self.invalid,
                **self.merged.to_json(), "problems": self.problems}


def pull_from(url: str, path: Path, *, timeout_s: float, retention_days: float,
              from_start: bool = False) -> PullResult:
    """Merges the records in the stream at `url` not pulled yet into `path`. Raises BackendError
    (the server) and sqlite3.Error (the local database)."""
    result = PullResult(url)
    stream = RecordStream(url, timeout_s)
    after = "0-0" if from_start else _last_id(path, url)
    try:
        for batch in stream.entries(after):
            docs = []
            for entry in batch:
                try:
                    docs.append(entry.document())
                except ValueError as e:
                    result.invalid += 1
                    if len(result.problems) < 5:
                        result.problems.append(f"entry {entry.id} ({entry.uuid or 'no uuid'}): {e}")
            result.entries += len(batch)
            merged = exchange.merge(path, docs, origin=url, retention_days=retention_days)
            for name in ("added", "duplicates", "expired", "actions"):
                setattr(result.merged, name, getattr(result.merged, name) + getattr(merged, name))
            _set_last_id(path, url, batch[-1].id)
    finally:
        stream.close()
    records.prune(path, retention_days)
    return result


def _last_id(path: Path, source: str) -> str:
    db = records._connect(path, create=True)  # creates or migrates: `pulls` is schema v2
    try:
        row = db.execute("SELECT last_id FROM pulls WHERE source = ?", (source,)).fetchone()
        return row[0] if row else "0-0"
    finally:
        db.close()


def _set_last_id(path: Path, source: str, last_id: str) -> None:
    db = records._connect(path, create=True)
    try:
        db.execute("INSERT INTO pulls (source, last_id, pulled_at) VALUES (?, ?, ?) ON CONFLICT(source) "
                   "DO UPDATE SET last_id = excluded.last_id, pulled_at = excluded.pulled_at",
                   (source, last_id, time.time()))
    finally:
        db.close()
