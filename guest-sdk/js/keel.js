// Keel's JavaScript guest SDK: the same small layer the Rust guest has
// (guest-sdk/src/lib.rs), so a plugin is an object with `apply` and `query`, JSON in and
// out, and typed KV and blob helpers instead of raw bindings.
//
//   import { KeelError, kv, stateMachine } from './keel.js';
//   export const { apply, query } = stateMachine({
//     apply(ctx, cmd) { ...; return { value }; },
//     query(q) { return { value: kv.getJson(`counter/${q.name}`) ?? 0 }; },
//   });
//
// Every node applies the same commands in the same order, so `apply` must be
// deterministic: no clocks but `ctx.timestampMs`, no randomness but `ctx.seed`, no I/O but
// the KV store and the blobs the command attaches or the plugin retains (docs/plugins.md).

import * as rawKv from 'keel:plugin/kv@0.1.1';
import * as rawBlobs from 'keel:plugin/blobs@0.1.1';
import { log as rawLog } from 'keel:plugin/log@0.1.1';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** A deterministic failure of a command or query: its message is the answer, every node
 * gives the same, and an `apply` that throws it writes nothing. */
export class KeelError extends Error {}

const bytes = (k) => (typeof k === 'string' ? encoder.encode(k) : k);

function text(b, what) {
  try {
    return decoder.decode(b);
  } catch {
    throw new KeelError(`${what} is not UTF-8`);
  }
}

function wrap(what, f) {
  try {
    return f();
  } catch (e) {
    throw new KeelError(`${what}: ${e?.payload ?? e}`);
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

/** The plugin's own namespace. Keys are strings (UTF-8) or Uint8Arrays, ordered bytewise. */
export const kv = {
  /** The bytes under `key`, or undefined. */
  get: (key) => rawKv.get(bytes(key)) ?? undefined,
  /** The string under `key`, or null. */
  getString(key) {
    const raw = rawKv.get(bytes(key));
    return raw === undefined || raw === null ? null : text(raw, 'stored value');
  },
  /** Stores bytes (or a string, as UTF-8) under `key`. */
  set: (key, value) => wrap('kv', () => rawKv.set(bytes(key), bytes(value))),
  /** Removes `key`; a missing key is not an error. */
  delete: (key) => wrap('kv', () => rawKv.delete(bytes(key))),
  /** The JSON value under `key`, or null. */
  getJson(key) {
    const s = kv.getString(key);
    if (s === null) return null;
    try {
      return JSON.parse(s);
    } catch (e) {
      throw new KeelError(`stored value is not JSON: ${e}`);
    }
  },
  /** Stores `value` as JSON under `key`. */
  setJson: (key, value) => kv.set(key, JSON.stringify(value)),
  /** Up to `limit` [key, value] pairs (Uint8Arrays) with start <= key < end, in key order. */
  range: (start, end, limit = 100) =>
    rawKv.range(bytes(start), end === undefined ? undefined : bytes(end), limit).map((e) => [e.key, e.value]),
  /** Up to `limit` [key, value] pairs whose key starts with `prefix`, in key order. */
  scanPrefix: (prefix, limit = 100) => kv.range(prefix, prefixEnd(bytes(prefix)), limit),
};

/** Bytes beside the log (docs/blobs.md): the command's attachments and the blobs this
 * plugin retains. A blob is `{ sha256, len }` (64 lowercase hex digits, bytes). */
export const blobs = {
  /** The host gives at most this much per read. */
  CHUNK: 1 << 20,
  /** The blobs the command being applied attaches, in the order the client named them. */
  attachments: () => rawBlobs.attachments().map((b) => ({ sha256: b.sha256, len: b.len })),
  /** Up to `len` bytes (at most 1 MiB) from `offset`; empty at or past the end. */
  read: (sha256, offset = 0n, len = blobs.CHUNK) =>
    wrap(`blob ${sha256}`, () => rawBlobs.read(sha256, BigInt(offset), Math.min(len, blobs.CHUNK))),
  /** The whole blob (mind the plugin's memory limit for large ones). */
  readAll(sha256) {
    const parts = [];
    let at = 0;
    for (;;) {
      const chunk = blobs.read(sha256, at);
      if (chunk.length === 0) break;
      parts.push(chunk);
      at += chunk.length;
    }
    const out = new Uint8Array(at);
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  },
  /** Keeps the blob while this plugin's state needs it (counted in the state). */
  retain: (sha256) => wrap(`blob ${sha256}`, () => rawBlobs.retain(sha256)),
  /** Drops one retain; the blob may be collected once none is left. */
  release: (sha256) => wrap(`blob ${sha256}`, () => rawBlobs.release(sha256)),
  /** How many retains this plugin holds on the blob. */
  retained: (sha256) => Number(rawBlobs.retained(sha256)),
};

/** Lines for the host's log (target `keel::plugin`). */
export const log = {
  debug: (m) => rawLog('debug', m),
  info: (m) => rawLog('info', m),
  warn: (m) => rawLog('warn', m),
  error: (m) => rawLog('error', m),
};

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

// A KeelError becomes the call's error result (a string, as jco expects); anything else
// thrown is a trap, also a deterministic failure, but with a less helpful message.
function run(f) {
  try {
    return encoder.encode(JSON.stringify(f()));
  } catch (e) {
    if (e instanceof KeelError) throw e.message;
    throw e;
  }
}

/** The `apply` and `query` exports, running `machine` ({ apply(ctx, cmd), query(q) }) with
 * JSON commands and answers. `ctx` is { index, term, timestampMs, seed, clientId }. */
export function stateMachine(machine) {
  return {
    apply: (ctx, command) =>
      run(() => {
        const cmd = load(command, 'command');
        return machine.apply(ctx, cmd);
      }),
    query: (q) =>
      run(() => {
        if (!machine.query) throw new KeelError('this plugin answers no queries');
        return machine.query(load(q, 'query'));
      }),
  };
}
