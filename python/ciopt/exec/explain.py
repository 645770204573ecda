"""Why an action was not a cache hit: its key's parts now, against the last recorded run.

`ciopt explain LABEL` computes the action's key from the current tree (generated inputs come
from their producers' cached results), looks it up, and diffs its parts against the records
of exec/key_record.py:

    hit          the key is in the cache (local or remote).
    changed      not in the cache, and the latest recorded run had another key.
    not_cached   the key equals the latest run's, yet no result is stored: that run failed
                 (failures are never cached), was flaky, or its entry was evicted by gc.
    never_built  not in the cache, and this store never ran the action.

In every case `changes` compare the current parts with the most recent recorded run whose key
differs: after a rebuild, what made it necessary; before one, what will make it.

Each change names its part: input (a file's digest), env (a declared variable), argv,
toolchain (platform, interpreter, lockfiles, an installed distribution) or attribute
(mnemonic, outputs, requires, timeout_s).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ciopt import Digest, Store, tree_digest
from ciopt.exec.action_result import ActionResult
from ciopt.exec.key_record import InputTriple, KeyParts, Recorded, read_record
from ciopt.graph.action_graph import PROJECT_PYTHON, ActionGraph, Toolchain, action_key
from ciopt.graph.label import Label
from ciopt.graph.target_graph import SourceTree

PARTS = ("argv", "env", "input", "toolchain", "attribute")


@dataclass(frozen=True)
class Change:
    part: str  # one of PARTS
    name: str  # the file, variable or toolchain entry
    before: str | None  # None: absent before (added)
    after: str | None  # None: absent now (removed)

    def to_json(self) -> dict[str, object]:
        return {"part": self.part, "name": self.name, "before": self.before, "after": self.after}


@dataclass
class Explanation:
    label: str
    key: str | None
    previous_key: str | None
    status: str  # hit | changed | not_cached | never_built
    changes: list[Change] = field(default_factory=list)
    tier: str | None = None  # where a hit is: local | remote
    note: str = ""  # a sentence for what the status alone does not say
    cause: Explanation | None = None  # an uncached producer of an input, explained in turn

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"label": self.label, "key": self.key, "previous_key": self.previous_key,
                                  "status": self.status, "changes": [c.to_json() for c in self.changes]}
        if self.tier:
            doc["tier"] = self.tier
        if self.note:
            doc["note"] = self.note
        if self.cause is not None:
            doc["cause"] = self.cause.to_json()
        return doc


class ProducerNotCached(Exception):
    """A generated input's producer has no cached result, so the current key cannot be known."""

    def __init__(self, producer: Label) -> None:
        super().__init__(str(producer))
        self.producer = producer


def diff(before: KeyParts, after: KeyParts) -> list[Change]:
    """Every part of `after`'s key that differs from `before`'s, argv first, each list sorted."""
    out: list[Change] = []
    if before.argv != after.argv:
        out.append(Change("argv", "argv", _argv(before.argv), _argv(after.argv)))
    out += _mapping_changes("env", dict(before.env), dict(after.env))
    if before.inputs is None or after.inputs is None:
        out.append(Change("input", "(input listing)", "unknown: evicted from the store" if before.inputs is None
                          else "", "unknown" if after.inputs is None else ""))
    else:
        out += _mapping_changes("input", {p: _file(d, x) for p, (d, x) in before.inputs.items()},
                                {p: _file(d, x) for p, (d, x) in after.inputs.items()})
    out += _toolchain_changes(before, after)
    for name in ("mnemonic", "outputs", "requires", "timeout_s"):
        b, a = getattr(before, name), getattr(after, name)
        if b != a:
            out.append(Change("attribute", name, _text(b), _text(a)))
    return out


def _argv(argv: tuple[str, ...]) -> str:
    import shlex

    return shlex.join(argv)


def _file(digest: str, executable: bool) -> str:
    return f"{digest} (executable)" if executable else digest


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=list)


def _mapping_changes(part: str, before: dict[str, str], after: dict[str, str]) -> list[Change]:
    return [Change(part, name, before.get(name), after.get(name))
            for name in sorted(before.keys() | after.keys()) if before.get(name) != after.get(name)]


def _flat(doc: dict[str, object], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in doc.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, name + "."))
        else:
            out[name] = _text(v)
    return out


def _toolchain_changes(before: KeyParts, after: KeyParts) -> list[Change]:
    b, a = _flat(before.toolchain), _flat(after.toolchain)
    dists = "interpreter.distributions"
    named: list[Change] = []
    if b.get(dists) != a.get(dists) and before.distributions is not None and after.distributions is not None:
        # The key holds only a hash of the list; the recorded lists name the packages.
        old = dict(d.partition("==")[::2] for d in before.distributions)
        new = dict(d.partition("==")[::2] for d in after.distributions)
        named = [Change("toolchain", f"distribution {n}", f"{n}=={old[n]}" if n in old else None,
                        f"{n}=={new[n]}" if n in new else None)
                 for n in sorted(old.keys() | new.keys()) if old.get(n) != new.get(n)]
        if named:
            b.pop(dists, None)
            a.pop(dists, None)
    return _mapping_changes("toolchain", b, a) + named


# -- the current key -------------------------------------------------------------------------

def current_parts(actions: ActionGraph, sources: SourceTree, store: Store, toolchain: Toolchain, label: Label,
                  digest: str = "blake3", distributions: Iterable[str] | None = None) -> KeyParts:
    """The parts of `label`'s key as a build would compute it now. Generated inputs take their
    producers' cached outputs; ProducerNotCached when a producer has none (build it first)."""
    outputs: dict[str, tuple[Digest, bool]] = {}
    needed = _closure(actions, label)
    for l in actions.order():
        if l not in needed:
            continue
        action = actions.actions[l]
        inputs = _inputs(actions, sources, outputs, action.inputs, l)
        tc = toolchain.for_action(action)
        key = action_key(action, tree_digest(inputs, digest), tc, digest)
        if l == label:
            python = action.argv[:1] == (PROJECT_PYTHON,) and distributions is not None
            return KeyParts.of(action, inputs, key, tc, tuple(distributions) if python else None)
        result = ActionResult.decode(store.action_get(key) or b"")
        if result is None:
            raise ProducerNotCached(l)
        for o in result.outputs:
            outputs[o.path] = (o.digest, o.is_executable)
    raise KeyError(label)


def _closure(actions: ActionGraph, label: Label) -> set[Label]:
    seen: set[Label] = set()
    todo = [label]
    while todo:
        l = todo.pop()
        if l not in seen:
            seen.add(l)
            todo.extend(actions.actions[l].deps)
    return seen


def _inputs(actions: ActionGraph, sources: SourceTree, generated: dict[str, tuple[Digest, bool]],
            paths: Iterable[str], own: Label) -> list[InputTriple]:
    # The engine's rule (Engine._inputs): a path some other action produces is that output.
    out = []
    for path in paths:
        producer = actions.producers.get(path)
        if producer is not None and producer != own:
            d, x = generated[path]
            out.append((path, d, x))
        else:
            out.append((path, sources.digests[path], path in sources.executable))
    return out


def explain(store: Store, current: KeyParts, remote_has: Callable[[str], bool] | None = None) -> Explanation:
    """Why `current` is or is not a cache hit, against the records of its label.
    `remote_has(key)` asks the shared cache too, when one is configured."""
    recorded = read_record(store, current.label)
    exp = Explanation(current.label, current.key, None, "never_built")
    tier = "local" if store.action_get(current.key) is not None else None
    if tier is None and remote_has is not None and remote_has(current.key):
        tier = "remote"
    previous = _previous(recorded, current.key)
    if previous is not None:
        exp.previous_key = previous.key
        exp.changes = diff(previous, current)
    if tier is not None:
        exp.status, exp.tier = "hit", tier
    elif recorded is not None and recorded.latest.key == current.key:
        exp.status = "not_cached"
        exp.note = ("the last run with this key failed, and failures are never cached"
                    if recorded.latest.status == "failed" else
                    "the last run with this key left no result in the cache (a flaky pass, an upload that was "
                    "dropped, or `ciopt cache gc` evicted it)")
    elif recorded is not None:
        exp.status = "changed"
    return exp


def explain_recorded(store: Store, label: str, key: str) -> Explanation:
    """For `ciopt build --explain`: why the action that just ran with `key` missed, from the
    records alone (the build has just written its parts as the latest)."""
    recorded = read_record(store, label)
    if recorded is None or recorded.latest.key != key:
        return Explanation(label, key, None, "never_built", note="no recorded parts for this run")
    previous = recorded.prior
    if previous is None:
        return Explanation(label, key, None, "never_built")
    return Explanation(label, key, previous.key, "changed", diff(previous, recorded.latest))


def _previous(recorded: Recorded | None, key: str) -> KeyParts | None:
    """The most recent recorded run with a key other than `key`."""
    if recorded is None:
        return None
    return recorded.latest if recorded.latest.key != key else recorded.prior


__all__ = ["PARTS", "Change", "Explanation", "ProducerNotCached", "current_parts", "diff", "explain",
           "explain_recorded"]
