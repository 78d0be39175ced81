"""{{name}}: a Keel state machine in Python. Every node applies the same commands in the
same order, so `apply` must be deterministic: no clocks, no randomness, no I/O but the KV
store (`ctx.timestamp_ms` and `ctx.seed` are the same on every node).

Commands: {"op":"add","name":N,"by":I} -> {"value":I}, {"op":"reset","name":N}.
Query: {"op":"get","name":N} -> {"value":I}.

`keel_sdk.py` is Keel's Python guest SDK: `kv` (typed KV helpers), `blobs` (attachments
and retained blobs), `log`, and `Error` for a refusal.
"""

from keel_sdk import Error, StateMachine, export, kv


def counter_key(name: str) -> str:
    return f"counter/{name}"


def name_of(obj: dict, what: str) -> str:
    name = obj.get("name")
    if not isinstance(name, str):
        raise Error(f"invalid {what}: `name` must be a string")
    return name


class Counter(StateMachine):
    def apply(self, ctx, cmd):
        op, name = cmd.get("op"), name_of(cmd, "command")
        if op == "add":
            by = cmd.get("by")
            if not isinstance(by, int) or isinstance(by, bool):
                raise Error("invalid command: `by` must be an integer")
            value = (kv.get_json(counter_key(name)) or 0) + by
            kv.set_json(counter_key(name), value)
            return {"value": value}
        if op == "reset":
            kv.delete(counter_key(name))
            return {"value": 0}
        raise Error(f"invalid command: unknown op {op!r}")

    def query(self, q):
        if q.get("op") == "get":
            return {"value": kv.get_json(counter_key(name_of(q, "query"))) or 0}
        raise Error(f"invalid query: unknown op {q.get('op')!r}")


# componentize-py exports the class named WitWorld.
WitWorld = export(Counter)
