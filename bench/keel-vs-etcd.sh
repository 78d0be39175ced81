#!/usr/bin/env bash
# The headline benchmark: a 3-node Keel cluster (kv plugin) against a 3-member etcd cluster,
# both on this machine, fsync on for both, driven by the same wrk load (../shared/peers).
#
#   bench/keel-vs-etcd.sh [-d SECONDS] [-r REPS] [-c "1 16 64"]
#
# Prints each side's RESULT lines, then a table: throughput and p50/p99 per concurrency and
# the Keel/etcd ratios (median over reps). Loopback only; everything it starts it stops.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
peers=${PEERS:-$root/../shared/peers}
dur=10 reps=2 concs="1 16 64"
while getopts "d:r:c:" o; do
  case $o in d) dur=$OPTARG ;; r) reps=$OPTARG ;; c) concs=$OPTARG ;; *) exit 2 ;; esac
done
[[ -x "$peers/kv-load.sh" ]] || { echo "peer scripts not found at $peers (set PEERS=)" >&2; exit 2; }

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v jq >/dev/null || need+=(jq)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  echo "# installing ${need[*]}" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release -q -p keel --manifest-path "$root/Cargo.toml"
target=${CARGO_TARGET_DIR:-$root/target}
keel="$target/release/keel"
out=$(mktemp -d -t keel-bench.XXXXXX)
dev_pid=""
cleanup() {
  if [[ -n "$dev_pid" ]]; then kill -INT "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

# --- Keel
"$keel" dev --nodes 3 --dir "$out/keel" > "$out/keel-dev.log" 2>&1 &
dev_pid=$!
leader=""
for _ in $(seq 1 200); do
  if [[ -s "$out/keel/cluster.json" ]]; then
    for u in $(jq -r '.nodes[].url' "$out/keel/cluster.json"); do
      s=$(curl -fsS "$u/v1/status" 2>/dev/null || true)
      if [[ $(jq -r '.role' <<<"$s" 2>/dev/null) == Leader ]] && jq -e '.plugins | index("kv")' <<<"$s" >/dev/null 2>&1; then
        leader=$u
      fi
    done
  fi
  [[ -n "$leader" ]] && break
  sleep 0.1
done
[[ -n "$leader" ]] || { echo "keel cluster did not elect a leader" >&2; cat "$out/keel-dev.log" >&2; exit 1; }
echo "# keel leader $leader"
"$peers/kv-load.sh" -u "$leader" -s "$peers/keel-kv.lua" -d "$dur" -r "$reps" -c "$concs" -g "64" | tee "$out/keel.txt"
curl -fsS "$leader/metrics" | grep -E '^keel_(proposals|log_commits|applied_entries)_total' | sed 's/^/# leader /' || true
cleanup; dev_pid=""

# --- etcd
"$peers/etcd-put-load.sh" -d "$dur" -r "$reps" -c "$concs" -g "64" | tee "$out/etcd.txt"

# --- table
python3 - "$out/keel.txt" "$out/etcd.txt" <<'PY'
import re, statistics, sys
def load(path):
    runs = {}
    for line in open(path):
        m = re.match(r'rep=\d+ (put|read) conc=(\d+) .*RESULT .*rps=([\d.]+) p50_us=(\d+) p90_us=\d+ p99_us=(\d+)', line)
        if m:
            runs.setdefault((m[1], int(m[2])), []).append((float(m[3]), int(m[4]), int(m[5])))
    return {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in runs.items()}
keel, etcd = load(sys.argv[1]), load(sys.argv[2])
print(f"{'op':5} {'conc':>4} | {'keel rps':>9} {'p50 ms':>7} {'p99 ms':>7} | {'etcd rps':>9} {'p50 ms':>7} {'p99 ms':>7} | {'rps x':>6} {'p99 /':>6}")
for key in sorted(set(keel) | set(etcd)):
    k, e = keel.get(key), etcd.get(key)
    if not (k and e): continue
    print(f"{key[0]:5} {key[1]:>4} | {k[0]:9.0f} {k[1]/1e3:7.2f} {k[2]/1e3:7.2f} | {e[0]:9.0f} {e[1]/1e3:7.2f} {e[2]/1e3:7.2f} | {k[0]/e[0]:6.2f} {k[2]/max(e[2],1):6.2f}")
PY
