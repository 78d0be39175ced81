"""Keel's Python guest SDK: the same small layer the Rust guest has (guest-sdk/src/lib.rs),
so a plugin is a class with `apply` and `query`, JSON in and out, and typed KV and blob
helpers instead of raw bindings.

    from keel_sdk import Error, StateMachine, export, kv

    class Counter(StateMachine):
        def apply(self, ctx, cmd):
            value = (kv.get_json(f"counter/{cmd['name']}") or 0) + cmd["by"]
            kv.set_json(f"counter/{cmd['name']}", value)
            return {"value": value}

        def query(self, q):
            return {"value": kv.get_json(f"counter/{q['name']}") or 0}

    WitWorld = export(Counter)   # componentize-py looks for `WitWorld`

Every node applies the same commands in the same order, so `apply` must be deterministic:
no clocks but `ctx.timestamp_ms`, no randomness but `ctx.seed`, no I/O but the KV store and
the blobs the command attaches or the plugin retains (docs/plugins.md).
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import blobs as _blobs
from wit_world.imports import kv as _kv
from wit_world.imports import log as _log

__all__ = ["Blob", "Context", "Error", "StateMachine", "blobs", "export", "kv", "log"]


class Error(Exception):
    """A deterministic failure of a command or query: its text is the answer, every node
    gives the same, and an `apply` that raises it writes nothing."""


def dumps(obj) -> bytes:
    """JSON as serde_json writes it (compact, UTF-8), so answers match a Rust plugin's."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _loads(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise Error(f"invalid {what}: {e}")
    if not isinstance(obj, dict):
        raise Error(f"invalid {what}: expected an object")
    return obj


def _key(key) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


class Context:
    """What a plugin may know about the entry it applies, identical on every node."""

    def __init__(self, ctx):
        self.index = ctx.index
        self.term = ctx.term
        self.timestamp_ms = ctx.timestamp_ms
        self.seed = ctx.seed
        self.client_id = ctx.client_id


class kv:
    """The plugin's own namespace. Keys are `str` (UTF-8) or `bytes`, ordered bytewise."""

    @staticmethod
    def get(key):
        """The bytes under `key`, or None."""
        return _kv.get(_key(key))

    @staticmethod
    def set(key, value) -> None:
        """Stores bytes (or a str, as UTF-8) under `key`."""
        value = value.encode() if isinstance(value, str) else bytes(value)
        try:
            _kv.set(_key(key), value)
        except Err as e:
            raise Error(f"kv: {e.value}")

    @staticmethod
    def delete(key) -> None:
        """Removes `key`; a missing key is not an error."""
        try:
            _kv.delete(_key(key))
        except Err as e:
            raise Error(f"kv: {e.value}")

    @staticmethod
    def get_json(key):
        """The JSON value under `key`, or None."""
        raw = _kv.get(_key(key))
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise Error(f"stored value under {key!r} is not JSON: {e}")

    @staticmethod
    def set_json(key, value) -> None:
        """Stores `value` as JSON under `key`."""
        kv.set(key, dumps(value))

    @staticmethod
    def range(start, end=None, limit: int = 100):
        """Up to `limit` (key, value) pairs with start <= key < end, in key order."""
        end = None if end is None else _key(end)
        return [(e.key, e.value) for e in _kv.range(_key(start), end, limit)]

    @staticmethod
    def scan_prefix(prefix, limit: int = 100):
        """Up to `limit` (key, value) pairs whose key starts with `prefix`, in key order."""
        return kv.range(prefix, _prefix_end(_key(prefix)), limit)


class Blob:
    """A blob: its SHA-256 (64 lowercase hex digits) and its length in bytes."""

    def __init__(self, sha256: str, length: int):
        self.sha256 = sha256
        self.len = length

    def __repr__(self):
        return f"Blob({self.sha256!r}, {self.len})"


class blobs:
    """Bytes beside the log (docs/blobs.md): the command's attachments and the blobs this
    plugin retains."""

    # The host gives at most this much per read.
    CHUNK = 1 << 20

    @staticmethod
    def attachments():
        """The blobs the command being applied attaches, in the order the client named them."""
        return [Blob(b.sha256, b.len) for b in _blobs.attachments()]

    @staticmethod
    def read(sha256: str, offset: int = 0, length: int = CHUNK) -> bytes:
        """Up to `length` bytes (at most 1 MiB) from `offset`; empty at or past the end."""
        try:
            return _blobs.read(sha256, offset, min(length, blobs.CHUNK))
        except Err as e:
            raise Error(f"blob {sha256}: {e.value}")

    @staticmethod
    def read_all(sha256: str) -> bytes:
        """The whole blob (mind the plugin's memory limit for large ones)."""
        out = bytearray()
        while True:
            chunk = blobs.read(sha256, len(out))
            if not chunk:
                return bytes(out)
            out += chunk

    @staticmethod
    def retain(sha256: str) -> None:
        """Keeps the blob while this plugin's state needs it (counted in the state)."""
        try:
            _blobs.retain(sha256)
        except Err as e:
            raise Error(f"blob {sha256}: {e.value}")

    @staticmethod
    def release(sha256: str) -> None:
        """Drops one retain; the blob may be collected once none is left."""
        try:
            _blobs.release(sha256)
        except Err as e:
            raise Error(f"blob {sha256}: {e.value}")

    @staticmethod
    def retained(sha256: str) -> int:
        """How many retains this plugin holds on the blob."""
        return _blobs.retained(sha256)


class log:
    """Lines for the host's log (target `keel::plugin`)."""

    @staticmethod
    def debug(message: str) -> None:
        _log.log(_log.Level.DEBUG, message)

    @staticmethod
    def info(message: str) -> None:
        _log.log(_log.Level.INFO, message)

    @staticmethod
    def warn(message: str) -> None:
        _log.log(_log.Level.WARN, message)

    @staticmethod
    def error(message: str) -> None:
        _log.log(_log.Level.ERROR, message)


class StateMachine:
    """Subclass it: `apply(ctx, command)` and `query(q)` take the decoded JSON object and
    return anything JSON can hold; raise `Error` to refuse."""

    def apply(self, ctx: Context, command: dict):
        raise Error("this plugin takes no commands")

    def query(self, q: dict):
        raise Error("this plugin answers no queries")


def export(machine):
    """The `WitWorld` class componentize-py exports, running `machine` (a StateMachine
    subclass) with JSON commands and answers."""
    sm = machine()

    class Exported(wit_world.WitWorld):
        def apply(self, ctx, command: bytes) -> bytes:
            try:
                return dumps(sm.apply(Context(ctx), _loads(command, "command")))
            except Error as e:
                raise Err(str(e))

        def query(self, q: bytes) -> bytes:
            try:
                return dumps(sm.query(_loads(q, "query")))
            except Error as e:
                raise Err(str(e))

    return Exported


def _prefix_end(prefix: bytes):
    end = bytearray(prefix)
    while end:
        last = end.pop()
        if last < 0xFF:
            end.append(last + 1)
            return bytes(end)
    return None
