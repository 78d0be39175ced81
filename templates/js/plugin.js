// {{name}}: a Keel state machine in JavaScript. Every node applies the same commands in
// the same order, so `apply` must be deterministic: no clocks, no randomness, no I/O but
// the KV store (`ctx.timestampMs` and `ctx.seed` are the same on every node).
//
// Commands: {"op":"add","name":N,"by":I} -> {"value":I}, {"op":"reset","name":N},
// {"op":"keep","name":N} with blobs attached (Keel-Attach) -> {"kept":K}.
// Queries: {"op":"get","name":N} -> {"value":I},
// {"op":"kept","name":N} -> {"blobs":K,"bytes":B,"first":byte|null}.
//
// `keel.js` is Keel's JavaScript guest SDK: `kv` (typed KV helpers), `blobs` (attachments
// and retained blobs), `log`, and `KeelError` for a refusal.
import { KeelError, blobs, kv, stateMachine } from './keel.js';

const counterKey = (name) => `counter/${name}`;
// The blobs kept under a name (their SHA-256s).
const keptKey = (name) => `kept/${name}`;

function nameOf(obj, what) {
  if (typeof obj.name !== 'string') throw new KeelError(`invalid ${what}: \`name\` must be a string`);
  return obj.name;
}

export const { apply, query } = stateMachine({
  apply(ctx, cmd) {
    const name = nameOf(cmd, 'command');
    switch (cmd.op) {
      case 'add': {
        if (!Number.isSafeInteger(cmd.by)) throw new KeelError('invalid command: `by` must be an integer');
        const value = (kv.getJson(counterKey(name)) ?? 0) + cmd.by;
        kv.setJson(counterKey(name), value);
        return { value };
      }
      case 'reset':
        kv.delete(counterKey(name));
        return { value: 0 };
      case 'keep': {
        // The blobs this command attaches replace those kept before: retained while the
        // state names them, released (and collectable) after.
        for (const old of kv.getJson(keptKey(name)) ?? []) blobs.release(old);
        const now = blobs.attachments().map((b) => {
          blobs.retain(b.sha256);
          return b.sha256;
        });
        kv.setJson(keptKey(name), now);
        return { kept: now.length };
      }
      default:
        throw new KeelError(`invalid command: unknown op ${JSON.stringify(cmd.op)}`);
    }
  },
  query(q) {
    if (q.op === 'get') return { value: kv.getJson(counterKey(nameOf(q, 'query'))) ?? 0 };
    if (q.op === 'kept') {
      const kept = kv.getJson(keptKey(nameOf(q, 'query'))) ?? [];
      let bytes = 0;
      let first = null;
      for (const sha256 of kept) {
        const data = blobs.readAll(sha256);
        if (first === null && data.length > 0) first = data[0];
        bytes += data.length;
      }
      return { blobs: kept.length, bytes, first };
    }
    throw new KeelError(`invalid query: unknown op ${JSON.stringify(q.op)}`);
  },
});
