"""{{name}}: a Keel state machine in Python. Every node applies the same commands in the
same order, so `apply` must be deterministic: no clocks, no randomness, no I/O but the KV
store.

Commands: {"op":"add","name":N,"by":I} -> {"value":I}, {"op":"reset","name":N}.
Query: {"op":"get","name":N} -> {"value":I}.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import kv


# --- Typed KV helpers -------------------------------------------------------------

def get_json(key: str):
    """The JSON value under `key`, or None."""
    raw = kv.get(key.encode())
    return None if raw is None else json.loads(raw)


def set_json(key: str, value) -> None:
    try:
        kv.set(key.encode(), dump(value))
    except Err as e:
        raise Err(f"kv: {e.value}")


def delete(key: str) -> None:
    try:
        kv.delete(key.encode())
    except Err as e:
        raise Err(f"kv: {e.value}")


def dump(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def load(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise Err(f"invalid {what}: {e}")
    if not isinstance(obj, dict):
        raise Err(f"invalid {what}: expected an object")
    return obj


# --- The state machine ----------------------------------------------------------

def counter_key(name: str) -> str:
    return f"counter/{name}"


class WitWorld(wit_world.WitWorld):
    def apply(self, ctx, command: bytes) -> bytes:
        cmd = load(command, "command")
        op, name = cmd.get("op"), cmd.get("name")
        if not isinstance(name, str):
            raise Err("invalid command: `name` must be a string")
        if op == "add":
            by = cmd.get("by")
            if not isinstance(by, int) or isinstance(by, bool):
                raise Err("invalid command: `by` must be an integer")
            value = (get_json(counter_key(name)) or 0) + by
            set_json(counter_key(name), value)
            return dump({"value": value})
        if op == "reset":
            delete(counter_key(name))
            return dump({"value": 0})
        raise Err(f"invalid command: unknown op {op!r}")

    def query(self, q: bytes) -> bytes:
        query = load(q, "query")
        if query.get("op") == "get":
            return dump({"value": get_json(counter_key(str(query.get("name")))) or 0})
        raise Err(f"invalid query: unknown op {query.get('op')!r}")
