"""Many processes on one store at once, and a writer killed with SIGKILL mid-batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ciopt

WRITER = r"""
import os, sys, ciopt
store = ciopt.Store(sys.argv[1])
worker = int(sys.argv[2])
# Workers overlap: worker k writes blobs k*100 .. k*100+299, seeded so overlaps are identical bytes.
blobs = []
for i in range(worker * 100, worker * 100 + 300):
    size = 200 + (i * 7919) % 9000 if i % 50 else (1 << 20) + i  # a few external blobs
    blobs.append(bytes([(i * 31 + j) % 251 for j in range(64)]) * (size // 64 + 1))
for start in range(0, len(blobs), 25):
    store.put_many(blobs[start:start + 25])
    for b in blobs[start:start + 25:5]:
        assert store.get(ciopt.hash_bytes(b)) == b
print("ok")
"""


def test_four_processes_write_overlapping_blobs(tmp_path: Path) -> None:
    path = tmp_path / "s"
    ciopt.Store(path)  # created up front so all workers race on writes, not on creation
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(k)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for k in range(4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "ok"
    s = ciopt.Store(path)
    assert s.stats()["blobs"] == 600  # indices 0..599 across the four overlapping workers
    report = s.verify()
    assert report["corrupt"] == [] and report["missing"] == [] and report["checked"] == 600


KILLED_WRITER = r"""
import os, sys, ciopt
store = ciopt.Store(sys.argv[1])
n = 0
while True:
    batch = [os.urandom(3000 + (n + i) % 5000) for i in range(200)] + [os.urandom((1 << 20) + 17)]
    ds = store.put_many(batch)
    n += 1
    # Only digests of committed batches are announced.
    sys.stdout.write(" ".join(str(d) for d in ds) + "\n")
    sys.stdout.flush()
"""


def test_writer_killed_mid_batch_leaves_a_consistent_store(tmp_path: Path) -> None:
    path = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed: list[str] = []
    deadline = time.time() + 60
    assert proc.stdout is not None
    while len(committed) < 3 * 201 and time.time() < deadline:
        committed += proc.stdout.readline().split()
    time.sleep(0.05)  # land the kill inside a later batch
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert len(committed) >= 3 * 201

    s = ciopt.Store(path)
    report = s.verify()
    assert report["corrupt"] == [] and report["missing"] == []
    digests = [ciopt.Digest.parse(d) for d in committed]
    assert s.find_missing(digests) == []
    got = s.get_many(digests)
    assert all(g is not None and ciopt.hash_bytes(g) == d for g, d in zip(got, digests))
    # And the store still takes writes.
    d = s.put(b"after the crash")
    assert s.get(d) == b"after the crash"
