"""Record documents: one invocation and its actions as a plain dict, to move between databases.

What the build pushes to the shared backend, what `ciopt analytics pull` merges, and what the
importers (JUnit XML, GitHub Actions JSON) produce:

    {"v": 1,
     "invocation": {"uuid": ..., "command": ..., "started_at": ..., <any invocations column>},
     "actions": {"columns": ["label", "status", ...], "rows": [[...], ...]}}

Columns, not one dict per action: a 200-action record is about half the bytes. Merging keeps
the columns this database knows and ignores the others, so a newer ciopt's records merge into
an older one's database. Invocations are identified by `uuid` (a uuid4 hex for recorded ones,
a name built from the source for imported ones): merging the same record twice adds it once.
"""

from __future__ import annotations

import json
import sqlite3
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ciopt.analytics.records import _connect, _derive, _read_only, _recount

__all__ = ["FORMAT_VERSION", "MAX_RECORDS", "MergeResult", "export_invocation", "merge", "pack", "unpack"]

FORMAT_VERSION = 1
# What a shared backend keeps of the pushed records, the newest first: the Redis stream
# (stream.py, `MAXLEN ~`) and the records endpoint of `ciopt cache serve` (cache/server.py).
MAX_RECORDS = 10_000

# Local to this database, or recomputed here from the merged rows (records._derive).
_LOCAL_INVOCATION_COLUMNS = frozenset({"id", "origin", "pushed_at"})
_LOCAL_ACTION_COLUMNS = frozenset({"id", "invocation_id"})


@dataclass
class MergeResult:
    added: int = 0  # new invocations
    duplicates: int = 0  # already here (same uuid)
    expired: int = 0  # older than the retention window
    actions: int = 0  # action rows added

    def to_json(self) -> dict[str, int]:
        return {"added": self.added, "duplicates": self.duplicates, "expired": self.expired,
                "actions": self.actions}


def export_invocation(db: sqlite3.Connection, invocation_id: int) -> dict[str, Any] | None:
    """The record document of one invocation, None when there is no such row."""
    cur = db.execute("SELECT * FROM invocations WHERE id = ?", (invocation_id,))
    names = [c[0] for c in cur.description]
    row = cur.fetchone()
    if row is None:
        return None
    invocation = {k: v for k, v in zip(names, row) if k not in _LOCAL_INVOCATION_COLUMNS}
    cur = db.execute("SELECT * FROM actions WHERE invocation_id = ? ORDER BY id", (invocation_id,))
    columns = [c[0] for c in cur.description]
    keep = [i for i, c in enumerate(columns) if c not in _LOCAL_ACTION_COLUMNS]
    rows = [[r[i] for i in keep] for r in cur]
    return {"v": FORMAT_VERSION, "invocation": invocation,
            "actions": {"columns": [columns[i] for i in keep], "rows": rows}}


def export_by_id(path: Path, invocation_id: int) -> dict[str, Any] | None:
    db = _read_only(path)
    if db is None:
        return None
    try:
        return export_invocation(db, invocation_id)
    finally:
        db.close()


def encode(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def pack(doc: Mapping[str, Any]) -> tuple[str, bytes]:
    """(uuid, zlib(JSON)): a record document as the shared backends store it."""
    return str(doc["invocation"]["uuid"]), zlib.compress(encode(doc), 1)


def unpack(payload: bytes) -> dict[str, Any]:
    """A record document from its stored form; ValueError when it is not one this ciopt reads."""
    try:
        raw = zlib.decompress(payload)
    except zlib.error as e:
        raise ValueError(f"not zlib data: {e}") from None
    return decode(raw)


def decode(data: bytes) -> dict[str, Any]:
    """A record document from its bytes; ValueError naming what is wrong."""
    doc = json.loads(data)
    problem = _problem(doc)
    if problem:
        raise ValueError(problem)
    return doc


def _problem(doc: object) -> str | None:
    if not isinstance(doc, dict):
        return "not a JSON object"
    if doc.get("v") != FORMAT_VERSION:
        return f"record format v={doc.get('v')!r}, this ciopt reads v={FORMAT_VERSION}"
    inv = doc.get("invocation")
    if not isinstance(inv, dict):
        return "no 'invocation' object"
    for key in ("uuid", "command", "started_at"):
        if inv.get(key) is None:
            return f"invocation.{key} is missing"
    if not isinstance(inv["started_at"], int | float):
        return "invocation.started_at is not a number"
    actions = doc.get("actions", {"columns": [], "rows": []})
    if not isinstance(actions, dict) or not isinstance(actions.get("columns"), list) \
            or not isinstance(actions.get("rows"), list):
        return "'actions' must be {\"columns\": [...], \"rows\": [[...], ...]}"
    width = len(actions["columns"])
    if actions["rows"] and not {"label", "status"} <= set(actions["columns"]):
        return "actions.columns must name at least label and status"
    if any(not isinstance(r, list) or len(r) != width for r in actions["rows"]):
        return f"every row of actions.rows must be a list of {width} values"
    return None


def merge(path: Path, docs: Iterable[Mapping[str, Any]], *, origin: str | None,
          retention_days: float | None = None, now: float | None = None,
          fill_actions: bool = False) -> MergeResult:
    """Adds the invocations of `docs` that `path` does not hold yet (by uuid), in one transaction,
    and derives their figures here. A non-baseline one older than `retention_days` is skipped.
    `fill_actions`: a known invocation with no actions yet gets the document's actions (the jobs
    of a GitHub run imported after the run itself). Raises sqlite3.Error and ValueError."""
    result = MergeResult()
    cutoff = None if retention_days is None else (time.time() if now is None else now) - retention_days * 86400
    db = _connect(Path(path), create=True)
    # Merging thousands of records updates the actions indexes all over a large file: with the
    # default 2 MB page cache that is a disk read per row.
    db.execute("PRAGMA cache_size = -131072")  # 128 MiB, for this connection only
    try:
        inv_cols = _columns(db, "invocations") - _LOCAL_INVOCATION_COLUMNS
        act_cols = _columns(db, "actions") - _LOCAL_ACTION_COLUMNS
        db.execute("BEGIN IMMEDIATE")
        try:
            for doc in docs:
                problem = _problem(doc)
                if problem:
                    raise ValueError(f"record {doc.get('invocation', {}).get('uuid', '?')}: {problem}"
                                     if isinstance(doc, dict) and isinstance(doc.get("invocation"), dict)
                                     else problem)
                _merge_one(db, doc, origin, cutoff, inv_cols, act_cols, fill_actions, result)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    finally:
        db.close()
    return result


def _merge_one(db: sqlite3.Connection, doc: Mapping[str, Any], origin: str | None, cutoff: float | None,
               inv_cols: set[str], act_cols: set[str], fill_actions: bool, result: MergeResult) -> None:
    inv = doc["invocation"]
    known = db.execute("SELECT id FROM invocations WHERE uuid = ?", (str(inv["uuid"]),)).fetchone()
    if known is not None:
        has_actions = db.execute("SELECT 1 FROM actions WHERE invocation_id = ? LIMIT 1", (known[0],)).fetchone()
        if fill_actions and has_actions is None and doc.get("actions", {}).get("rows"):
            result.actions += _insert_actions(db, known[0], doc["actions"], act_cols)
            _recount(db, known[0])
            _derive(db, known[0])
        result.duplicates += 1
        return
    if cutoff is not None and not inv.get("baseline") and float(inv["started_at"]) < cutoff:
        result.expired += 1
        return
    row = {k: v for k, v in inv.items() if k in inv_cols}
    row["origin"] = origin
    if isinstance(row.get("patterns"), list):
        row["patterns"] = json.dumps(row["patterns"])
    row.setdefault("patterns", "[]")
    row.setdefault("workspace", "")
    names = list(row)
    cur = db.execute(f"INSERT INTO invocations ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
                     [row[n] for n in names])
    invocation_id = cur.lastrowid
    assert invocation_id is not None
    result.added += 1
    actions = doc.get("actions")
    if actions and actions.get("rows"):
        result.actions += _insert_actions(db, invocation_id, actions, act_cols)
        _recount(db, invocation_id)  # the counts follow the rows, whatever the document said
    _derive(db, invocation_id)


def _insert_actions(db: sqlite3.Connection, invocation_id: int, actions: Mapping[str, Any],
                    act_cols: set[str]) -> int:
    columns = list(actions["columns"])
    keep = [i for i, c in enumerate(columns) if c in act_cols]
    names = ["invocation_id", *(columns[i] for i in keep)]
    sql = f"INSERT INTO actions ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
    rows = [(invocation_id, *(r[i] for i in keep)) for r in actions["rows"]]
    db.executemany(sql, rows)
    return len(rows)


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
