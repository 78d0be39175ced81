#!/usr/bin/env bash
# The headline benchmark: a 3-node Keel cluster (kv plugin) against a 3-member etcd cluster,
# both on this machine, fsync on for both, driven by the same wrk load (../shared/peers).
#
#   bench/keel-vs-etcd.sh [-d SECONDS] [-r REPS] [-c "1 16 64"]
#
# Prints each side's RESULT lines, then a table: throughput and p50/p99 per concurrency and
# the Keel/etcd ratios (median over reps), then the ceiling: the same put load against one
# process with no consensus at all (host/examples/ceiling.rs: hyper + a HashMap + a
# group-committed fdatasync), the bound any 3-replica system on these cores lives under.
# Loopback only; everything it starts it stops.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(cd "$here/.." && pwd)
peers=${PEERS:-$root/../shared/peers}
dur=10 reps=2 concs="1 16 64"
while getopts "d:r:c:" o; do
  case $o in d) dur=$OPTARG ;; r) reps=$OPTARG ;; c) concs=$OPTARG ;; *) exit 2 ;; esac
done
[[ -x "$peers/kv-load.sh" ]] || { echo "peer scripts not found at $peers (set PEERS=)" >&2; exit 2; }

bench_tools

cargo build --release -q -p keel --bin keel --example ceiling --manifest-path "$root/Cargo.toml"
target=${CARGO_TARGET_DIR:-$root/target}
keel="$target/release/keel"
ceiling="$target/release/examples/ceiling"
out=$(mktemp -d -t keel-bench.XXXXXX)
dev_pid=""
cleanup() {
  if [[ -n "$dev_pid" ]]; then kill -INT "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

# --- Keel
"$keel" dev --nodes 3 --dir "$out/keel" > "$out/keel-dev.log" 2>&1 &
dev_pid=$!
leader=$(wait_keel_leader "$out/keel" "$out/keel-dev.log")
echo "# keel leader $leader"
"$peers/kv-load.sh" -u "$leader" -s "$peers/keel-kv.lua" -d "$dur" -r "$reps" -c "$concs" -g "64" | tee "$out/keel.txt"
curl -fsS "$leader/metrics" | grep -E '^keel_(proposals|log_commits|applied_entries)_total' | sed 's/^/# leader /' || true
cleanup; dev_pid=""

# --- etcd
"$peers/etcd-put-load.sh" -d "$dur" -r "$reps" -c "$concs" -g "64" | tee "$out/etcd.txt"

# --- ceiling: puts only, same load
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$ceiling" --listen "127.0.0.1:$port" --dir "$out/ceiling" --fsync > "$out/ceiling.log" 2>&1 &
ceiling_pid=$!
for _ in $(seq 1 100); do curl -fsS -o /dev/null -X POST -d '{"op":"get","key":"k"}' "http://127.0.0.1:$port/v1/plugins/kv/query" 2>/dev/null && break; sleep 0.05; done
"$peers/kv-load.sh" -u "http://127.0.0.1:$port" -s "$peers/keel-kv.lua" -d "$dur" -r "$reps" -c "64" -g "" | tee "$out/ceiling.txt"
kill "$ceiling_pid" 2>/dev/null || true; wait "$ceiling_pid" 2>/dev/null || true

# --- table
python3 - "$out/keel.txt" "$out/etcd.txt" "$out/ceiling.txt" <<'PY'
import re, statistics, sys
def load(path):
    runs = {}
    for line in open(path):
        m = re.match(r'rep=\d+ (put|read) conc=(\d+) .*RESULT .*rps=([\d.]+) p50_us=(\d+) p90_us=\d+ p99_us=(\d+)', line)
        if m:
            runs.setdefault((m[1], int(m[2])), []).append((float(m[3]), int(m[4]), int(m[5])))
    return {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in runs.items()}
keel, etcd, ceiling = load(sys.argv[1]), load(sys.argv[2]), load(sys.argv[3])
print(f"{'op':5} {'conc':>4} | {'keel rps':>9} {'p50 ms':>7} {'p99 ms':>7} | {'etcd rps':>9} {'p50 ms':>7} {'p99 ms':>7} | {'rps x':>6} {'p99 /':>6}")
for key in sorted(set(keel) | set(etcd)):
    k, e = keel.get(key), etcd.get(key)
    if not (k and e): continue
    print(f"{key[0]:5} {key[1]:>4} | {k[0]:9.0f} {k[1]/1e3:7.2f} {k[2]/1e3:7.2f} | {e[0]:9.0f} {e[1]/1e3:7.2f} {e[2]/1e3:7.2f} | {k[0]/e[0]:6.2f} {k[2]/max(e[2],1):6.2f}")
c, e, k = ceiling.get(("put", 64)), etcd.get(("put", 64)), keel.get(("put", 64))
if c and e and k:
    print(f"ceiling put 64: {c[0]:.0f} req/s (p50 {c[1]/1e3:.2f} ms, p99 {c[2]/1e3:.2f} ms) from one process with no consensus;")
    print(f"  Keel reaches {k[0]/c[0]:.2f} of it with 3 replicas; 10x etcd would be {10*e[0]:.0f} req/s = {10*e[0]/c[0]:.2f}x the ceiling.")
PY
