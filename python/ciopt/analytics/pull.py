"""`ciopt analytics pull`: merge the records every runner pushed into a local SQLite: from the
Redis stream (stream.py) or from the records endpoint of `ciopt cache serve` (cache/server.py,
GET /records?after=ID).

Each source remembers the last entry merged (a stream entry id, or a records id) (table `pulls`), so a pull reads only what
is new; every record is deduplicated by its invocation uuid all the same, so pulling twice,
or from two servers that hold the same records, adds each invocation once. Records older than
`analytics.retention_days` are not merged, and the local database is pruned to it afterwards.
An entry this ciopt cannot read (garbled, a newer format) is counted and skipped.
"""

from __future__ import annotations

import time
from base64 import b64decode
from binascii import Error as Base64Error
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ciopt.analytics import exchange, records

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
    """Merges the records at `url` (a Redis server, or an http(s) `ciopt cache serve`) not pulled
    yet into `path`. Raises BackendError (the server; for HTTP, also one without a records
    endpoint), ValueError (the URL) and sqlite3.Error (the local database)."""
    result = PullResult(url)
    http = url.split("://", 1)[0].lower() in ("http", "https")
    if http:
        from ciopt.cache.http_backend import HttpBackend

        source: _Source = _HttpRecords(HttpBackend(url, timeout_s))
    else:
        from ciopt.analytics.stream import RecordStream

        source = RecordStream(url, timeout_s)
    after = _last_id(path, url)
    if from_start or (http and not after.isdigit()):
        after = "0" if http else "0-0"
    try:
        for batch in source.entries(after):
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
        source.close()
    records.prune(path, retention_days)
    return result


class _Entry:
    __slots__ = ("id", "uuid", "payload", "problem")

    def __init__(self, entry_id: str, uuid: str, payload: bytes, problem: str | None = None) -> None:
        self.id = entry_id
        self.uuid = uuid
        self.payload = payload
        self.problem = problem

    def document(self) -> dict:
        if self.problem is not None:
            raise ValueError(self.problem)
        return exchange.unpack(self.payload)


class _Source:  # what pull_from reads: RecordStream (Redis) or _HttpRecords
    def entries(self, after: str) -> Iterator[list[_Entry]]: ...

    def close(self) -> None: ...


class _HttpRecords(_Source):
    """The records endpoint of `ciopt cache serve`, a page at a time."""

    PAGE = 200

    def __init__(self, backend: object) -> None:
        self.backend = backend

    def entries(self, after: str) -> Iterator[list[_Entry]]:
        from ciopt.cache.backend import BackendError

        cursor = int(after)
        while True:
            page = self.backend.get_records(cursor, self.PAGE)  # type: ignore[attr-defined]
            if page is None:
                raise BackendError(f"http {self.backend.name}: no records endpoint here (404): records "  # type: ignore[attr-defined]
                                   "are kept by `ciopt cache serve` or a Redis server, not by a plain HTTP cache")
            rows = page.get("entries")
            if not isinstance(rows, list):
                raise BackendError(f"http {self.backend.name}: GET /records: no 'entries' list in the answer")  # type: ignore[attr-defined]
            out = []
            for row in rows:
                if not isinstance(row, dict) or not isinstance(row.get("id"), int):
                    raise BackendError(f"http {self.backend.name}: GET /records: an entry without an id")  # type: ignore[attr-defined]
                try:
                    payload, problem = b64decode(str(row.get("z", "")), validate=True), None
                except (Base64Error, ValueError) as e:
                    payload, problem = b"", f"not base64: {e}"
                out.append(_Entry(str(row["id"]), str(row.get("uuid") or ""), payload, problem))
            if not out:
                return
            cursor = int(out[-1].id)
            yield out
            if not page.get("more"):
                return

    def close(self) -> None:
        self.backend.close()  # type: ignore[attr-defined]


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
