// {{name}}: a Keel state machine in JavaScript. Every node applies the same commands in
// the same order, so `apply` must be deterministic: no clocks, no randomness, no I/O but
// the KV store.
//
// Commands: {"op":"add","name":N,"by":I} -> {"value":I}, {"op":"reset","name":N}.
// Query: {"op":"get","name":N} -> {"value":I}.
import { get as kvGet, set as kvSet, delete as kvDelete } from 'keel:plugin/kv@0.1.1';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

// --- Typed KV helpers ---

function getJson(key) {
  const raw = kvGet(encoder.encode(key));
  return raw === undefined || raw === null ? null : JSON.parse(decoder.decode(raw));
}

function setJson(key, value) {
  kvSet(encoder.encode(key), encoder.encode(JSON.stringify(value)));
}

function remove(key) {
  kvDelete(encoder.encode(key));
}

function load(bytes, what) {
  let obj;
  try {
    obj = JSON.parse(decoder.decode(bytes));
  } catch (e) {
    throw `invalid ${what}: ${e}`;
  }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw `invalid ${what}: expected an object`;
  }
  return obj;
}

const dump = (obj) => encoder.encode(JSON.stringify(obj));

// --- The state machine ---

const counterKey = (name) => `counter/${name}`;

export function apply(ctx, command) {
  const cmd = load(command, 'command');
  if (typeof cmd.name !== 'string') throw 'invalid command: `name` must be a string';
  switch (cmd.op) {
    case 'add': {
      if (!Number.isSafeInteger(cmd.by)) throw 'invalid command: `by` must be an integer';
      const value = (getJson(counterKey(cmd.name)) ?? 0) + cmd.by;
      setJson(counterKey(cmd.name), value);
      return dump({ value });
    }
    case 'reset':
      remove(counterKey(cmd.name));
      return dump({ value: 0 });
    default:
      throw `invalid command: unknown op ${JSON.stringify(cmd.op)}`;
  }
}

export function query(q) {
  const query = load(q, 'query');
  if (query.op === 'get') return dump({ value: getJson(counterKey(String(query.name))) ?? 0 });
  throw `invalid query: unknown op ${JSON.stringify(query.op)}`;
}
