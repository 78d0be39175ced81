// {{name}}: a Keel state machine in JavaScript. Every node applies the same commands in
// the same order, so `apply` must be deterministic: no clocks, no randomness, no I/O but
// the KV store (`ctx.timestampMs` and `ctx.seed` are the same on every node).
//
// Commands: {"op":"add","name":N,"by":I} -> {"value":I}, {"op":"reset","name":N}.
// Query: {"op":"get","name":N} -> {"value":I}.
//
// `keel.js` is Keel's JavaScript guest SDK: `kv` (typed KV helpers), `blobs` (attachments
// and retained blobs), `log`, and `KeelError` for a refusal.
import { KeelError, kv, stateMachine } from './keel.js';

const counterKey = (name) => `counter/${name}`;

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
      default:
        throw new KeelError(`invalid command: unknown op ${JSON.stringify(cmd.op)}`);
    }
  },
  query(q) {
    if (q.op === 'get') return { value: kv.getJson(counterKey(nameOf(q, 'query'))) ?? 0 };
    throw new KeelError(`invalid query: unknown op ${JSON.stringify(q.op)}`);
  },
});
