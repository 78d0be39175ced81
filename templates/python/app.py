"""{{name}}: a Keel state machine in Python. Every node applies the same commands in the
same order, so `apply` must be deterministic: no clocks, no randomness, no I/O but the KV
store (`ctx.timestamp_ms` and `ctx.seed` are the same on every node).

Commands: {"op":"add","name":N,"by":I} -> {"value":I}, {"op":"reset","name":N},
{"op":"keep","name":N} with blobs attached (Keel-Attach) -> {"kept":K}.
Queries: {"op":"get","name":N} -> {"value":I},
{"op":"kept","name":N} -> {"blobs":K,"bytes":B,"first":byte|null}.

`keel_sdk.py` is Keel's Python guest SDK: `kv` (typed KV helpers), `blobs` (attachments
and retained blobs), `log`, and `Error` for a refusal.
"""

from keel_sdk import Error, StateMachine, blobs, export, kv


def counter_key(name: str) -> str:
    return f"counter/{name}"


def kept_key(name: str) -> str:
    """The blobs kept under a name (their SHA-256s)."""
    return f"kept/{name}"


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
        if op == "keep":
            # The blobs this command attaches replace those kept before: retained while
            # the state names them, released (and collectable) after.
            for old in kv.get_json(kept_key(name)) or []:
                blobs.release(old)
            now = []
            for blob in blobs.attachments():
                blobs.retain(blob.sha256)
                now.append(blob.sha256)
            kv.set_json(kept_key(name), now)
            return {"kept": len(now)}
        raise Error(f"invalid command: unknown op {op!r}")

    def query(self, q):
        if q.get("op") == "get":
            return {"value": kv.get_json(counter_key(name_of(q, "query"))) or 0}
        if q.get("op") == "kept":
            kept = kv.get_json(kept_key(name_of(q, "query"))) or []
            size, first = 0, None
            for sha256 in kept:
                data = blobs.read_all(sha256)
                if first is None and data:
                    first = data[0]
                size += len(data)
            return {"blobs": len(kept), "bytes": size, "first": first}
        raise Error(f"invalid query: unknown op {q.get('op')!r}")


# componentize-py exports the class named WitWorld.
WitWorld = export(Counter)
