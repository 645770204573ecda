"""BuildRecords on the shared Redis: one stream that every runner appends to and `ciopt analytics
pull` reads from.

    key   <ns>:records   (ns "ciopt", as the cache's keys)
    entry {"uuid": <invocation uuid>, "v": "1", "z": zlib(JSON record document, exchange.py)}

The stream is capped: each XADD trims it to about MAX_RECORDS entries (`MAXLEN ~`, which
trims whole macro-nodes, cheap), and to the retention window (`XTRIM MINID ~`: entry ids are
millisecond timestamps). A 200-action record is 3-8 KB compressed, so the stream holds tens of
MB at most: pull at least once per MAX_RECORDS invocations (a nightly job) to keep them all.
Credentials and URL forms are the cache backend's (cache/redis_backend.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ciopt.analytics import exchange
from ciopt.cache.backend import BackendError
from ciopt.cache.redis_backend import PASSWORD_ENV, USERNAME_ENV, _url_options

__all__ = ["MAX_RECORDS", "RecordStream", "StreamEntry", "min_id"]

MAX_RECORDS = exchange.MAX_RECORDS
READ_BATCH = 200


def min_id(retention_days: float) -> str:
    """The stream entry id of the retention window's start (ids are millisecond times)."""
    return f"{int((time.time() - retention_days * 86400) * 1000)}-0"


class StreamEntry:
    __slots__ = ("id", "uuid", "payload")

    def __init__(self, entry_id: str, uuid: str, payload: bytes) -> None:
        self.id = entry_id
        self.uuid = uuid
        self.payload = payload

    def document(self) -> dict:
        """The record document; ValueError when the entry is not one this ciopt reads."""
        return exchange.unpack(self.payload)


class RecordStream:
    def __init__(self, url: str, timeout_s: float, namespace: str = "ciopt") -> None:
        options = _url_options(url)  # ValueError for credentials in the URL
        options.update(socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0),
                       username=os.environ.get(USERNAME_ENV) or None, password=os.environ.get(PASSWORD_ENV) or None)
        options.setdefault("protocol", 2)
        self.name = url
        self.key = f"{namespace}:records"
        self._pool = redis.ConnectionPool(**options)
        self._redis = redis.Redis(connection_pool=self._pool)

    def push(self, document: dict, *, retention_days: float | None = None, max_records: int = MAX_RECORDS) -> str:
        """Appends one record document; returns its entry id. BackendError on any failure."""
        return self.push_many([document], retention_days=retention_days, max_records=max_records)[0]

    def push_many(self, documents: list[dict], *, retention_days: float | None = None,
                  max_records: int = MAX_RECORDS) -> list[str]:
        """Appends record documents in one round trip; returns their entry ids."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            for document in documents:
                uuid, payload = exchange.pack(document)
                fields = {"uuid": uuid, "v": str(exchange.FORMAT_VERSION), "z": payload}
                pipe.xadd(self.key, fields, maxlen=max_records, approximate=True)
            if retention_days is not None:
                pipe.xtrim(self.key, minid=min_id(retention_days), approximate=True)
            # A server before 6.2 refuses MINID: the entries are in all the same.
            replies = pipe.execute(raise_on_error=False)
        except (redis.RedisError, OSError) as e:
            raise BackendError(f"redis {self.name}: push record: {' '.join(str(e).split())}") from e
        ids = []
        for reply in replies[:len(documents)]:
            if isinstance(reply, Exception):
                raise BackendError(f"redis {self.name}: push record: {reply}")
            ids.append(reply.decode() if isinstance(reply, bytes) else str(reply))
        return ids

    def entries(self, after: str = "0-0", batch: int = READ_BATCH) -> Iterator[list[StreamEntry]]:
        """The entries after entry id `after`, oldest first, `batch` at a time."""
        cursor = after
        while True:
            try:
                rows = self._redis.xrange(self.key, min=f"({cursor}", max="+", count=batch)
            except (redis.RedisError, OSError) as e:
                raise BackendError(f"redis {self.name}: read records: {' '.join(str(e).split())}") from e
            if not rows:
                return
            out = []
            for entry_id, fields in rows:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                uuid = fields.get(b"uuid", b"").decode("utf-8", "replace")
                out.append(StreamEntry(eid, uuid, fields.get(b"z", b"")))
            cursor = out[-1].id
            yield out
            if len(rows) < batch:
                return

    def length(self) -> int:
        try:
            return int(self._redis.xlen(self.key))
        except (redis.RedisError, OSError) as e:
            raise BackendError(f"redis {self.name}: {' '.join(str(e).split())}") from e

    def close(self) -> None:
        self._pool.disconnect()
