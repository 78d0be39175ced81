// Keel's kv plugin in JavaScript: the same JSON contract and the same KV bytes as the
// Rust plugin in plugins/kv (see its lib.rs for the table).
//
// Build (the tests do this), from this directory after `npm ci`:
//   npx jco componentize kv.js --wit ../../wit --world-name keel:plugin/state-machine \
//     --disable all -o kv-js.wasm

import { get as kvGet, set as kvSet, delete as kvDelete, range as kvRange } from 'keel:plugin/kv@0.1.1';

const MAX_RANGE = 1000;
const DEFAULT_LIMIT = 100;
const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

function decode(bytes) {
  try {
    return decoder.decode(bytes);
  } catch {
    throw 'stored value is not UTF-8';
  }
}

function load(data, what) {
  let obj;
  try {
    obj = JSON.parse(decoder.decode(data));
  } catch (e) {
    throw `invalid ${what}: ${e}`;
  }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw `invalid ${what}: expected an object`;
  }
  return obj;
}

function field(obj, name, optional = false) {
  const value = obj[name];
  if (value === undefined || value === null) {
    if (optional) return null;
    throw `invalid command: missing field \`${name}\``;
  }
  if (typeof value !== 'string') throw `invalid command: \`${name}\` must be a string`;
  return value;
}

function getText(key) {
  const value = kvGet(encoder.encode(key));
  return value === undefined ? null : decode(value);
}

function setText(key, value) {
  try {
    kvSet(encoder.encode(key), encoder.encode(value));
  } catch (e) {
    throw `kv: ${e.payload ?? e}`;
  }
}

function prefixEnd(prefix) {
  const end = Array.from(prefix);
  while (end.length > 0) {
    const last = end.pop();
    if (last < 0xff) {
      end.push(last + 1);
      return new Uint8Array(end);
    }
  }
  return undefined;
}

function dump(obj) {
  return encoder.encode(JSON.stringify(obj));
}

export function apply(ctx, command) {
  const cmd = load(command, 'command');
  switch (cmd.op) {
    case 'put': {
      const key = field(cmd, 'key');
      const value = field(cmd, 'value');
      const prev = getText(key);
      setText(key, value);
      return dump({ prev });
    }
    case 'delete': {
      const key = field(cmd, 'key');
      const prev = getText(key);
      if (prev !== null) kvDelete(encoder.encode(key));
      return dump({ prev });
    }
    case 'cas': {
      const key = field(cmd, 'key');
      const value = field(cmd, 'value');
      const expect = field(cmd, 'expect', true);
      const current = getText(key);
      if (current === expect) {
        setText(key, value);
        return dump({ ok: true, current: value });
      }
      return dump({ ok: false, current });
    }
    default:
      throw `invalid command: unknown op ${JSON.stringify(cmd.op)}`;
  }
}

export function query(q) {
  const query = load(q, 'query');
  switch (query.op) {
    case 'get':
      return dump({ value: getText(field(query, 'key')) });
    case 'range': {
      const prefix = encoder.encode(field(query, 'prefix'));
      const limit = query.limit ?? DEFAULT_LIMIT;
      if (!Number.isInteger(limit) || limit < 0) {
        throw 'invalid query: `limit` must be a non-negative integer';
      }
      const entries = kvRange(prefix, prefixEnd(prefix), Math.min(limit, MAX_RANGE));
      return dump({ items: entries.map((e) => [decode(e.key), decode(e.value)]) });
    }
    default:
      throw `invalid query: unknown op ${JSON.stringify(query.op)}`;
  }
}
