"""Keel's kv plugin in Python: the same JSON contract and the same KV bytes as the
Rust plugin in plugins/kv (see its lib.rs for the table).

Build (the tests do this): componentize-py -d wit -w keel:plugin/state-machine \
    componentize app -p plugins/kv-py -o kv-py.wasm
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import kv

MAX_RANGE = 1000
DEFAULT_LIMIT = 100


def _dump(obj) -> bytes:
    # Byte-identical to serde_json's compact output.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _load(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise Err(f"invalid {what}: {e}")
    if not isinstance(obj, dict):
        raise Err(f"invalid {what}: expected an object")
    return obj


def _field(obj: dict, name: str, optional: bool = False):
    if name not in obj:
        if optional:
            return None
        raise Err(f"invalid command: missing field `{name}`")
    value = obj[name]
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise Err(f"invalid command: `{name}` must be a string")
    return value


def _get(key: str):
    value = kv.get(key.encode())
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise Err("stored value is not UTF-8")


def _set(key: str, value: str) -> None:
    try:
        kv.set(key.encode(), value.encode())
    except Err as e:
        raise Err(f"kv: {e.value}")


def _prefix_end(prefix: bytes):
    end = bytearray(prefix)
    while end:
        last = end.pop()
        if last < 0xFF:
            end.append(last + 1)
            return bytes(end)
    return None


class WitWorld(wit_world.WitWorld):
    def apply(self, ctx, command: bytes) -> bytes:
        cmd = _load(command, "command")
        op = cmd.get("op")
        if op == "put":
            key, value = _field(cmd, "key"), _field(cmd, "value")
            prev = _get(key)
            _set(key, value)
            return _dump({"prev": prev})
        if op == "delete":
            key = _field(cmd, "key")
            prev = _get(key)
            if prev is not None:
                kv.delete(key.encode())
            return _dump({"prev": prev})
        if op == "cas":
            key, value = _field(cmd, "key"), _field(cmd, "value")
            expect = _field(cmd, "expect", optional=True)
            current = _get(key)
            if current == expect:
                _set(key, value)
                return _dump({"ok": True, "current": value})
            return _dump({"ok": False, "current": current})
        raise Err(f"invalid command: unknown op {op!r}")

    def query(self, q: bytes) -> bytes:
        query = _load(q, "query")
        op = query.get("op")
        if op == "get":
            return _dump({"value": _get(_field(query, "key"))})
        if op == "range":
            prefix = _field(query, "prefix").encode()
            limit = query.get("limit", DEFAULT_LIMIT)
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                raise Err("invalid query: `limit` must be a non-negative integer")
            entries = kv.range(prefix, _prefix_end(prefix), min(limit, MAX_RANGE))
            try:
                items = [[e.key.decode(), e.value.decode()] for e in entries]
            except UnicodeDecodeError:
                raise Err("stored value is not UTF-8")
            return _dump({"items": items})
        raise Err(f"invalid query: unknown op {op!r}")
