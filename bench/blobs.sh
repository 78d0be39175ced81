#!/usr/bin/env bash
# Large commands (issue #11, design §6): a 3-node Keel cluster in reference mode (bodies over
# 64 KiB go to a blob on a majority, the log holds the hash), the same cluster with the
# threshold raised so bodies travel inline in the log (where they fit: an entry is at most
# 4 MiB), and a 3-member etcd cluster at 1 MiB (near its 1.5 MiB request limit), all on this
# machine, fsync on, driven by the same wrk put load (../shared/peers) with values of 64 KiB
# and 1 MiB (the kv plugin's largest value); then plain uploads (`PUT /v1/blobs`) of 16 MiB.
#
#   bench/blobs.sh [-d SECONDS] [-c CONNECTIONS]
#
# Prints each run's RESULT line, then a table of MB/s committed (and applied: a put is
# answered once applied on the leader), p50/p99, and the ratios the issue asks for; then each
# Keel node's peak RSS. Loopback only; everything it starts it stops.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(cd "$here/.." && pwd)
peers=${PEERS:-$root/../shared/peers}
dur=10 conc=4
while getopts "d:c:" o; do
  case $o in d) dur=$OPTARG ;; c) conc=$OPTARG ;; *) exit 2 ;; esac
done
[[ -x "$peers/kv-load.sh" ]] || { echo "peer scripts not found at $peers (set PEERS=)" >&2; exit 2; }
bench_tools
cargo build --release -q -p keel --bin keel --manifest-path "$root/Cargo.toml"
keel="${CARGO_TARGET_DIR:-$root/target}/release/keel"
out=$(mktemp -d -t keel-blobs.XXXXXX)
dev_pid=""
stop_keel() {
  if [[ -n "$dev_pid" ]]; then kill -INT "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; fi
  dev_pid=""
}
trap stop_keel EXIT

start_keel() { # sets $leader
  "$keel" dev --nodes 3 --dir "$out/keel" >> "$out/keel-dev.log" 2>&1 &
  dev_pid=$!
  leader=$(wait_keel_leader "$out/keel" "$out/keel-dev.log")
}

load() { # label url lua bytes
  KEYSPACE=16 VALUE_BYTES=$4 "$peers/kv-load.sh" -u "$2" -s "$3" -d "$dur" -r 1 -c "$conc" -g "" \
    | grep RESULT | sed "s/^/$1 bytes=$4 /" | tee -a "$out/results.txt"
}

rss() { # peak RSS of each keel serve process of the cluster
  for pid in $(pgrep -f "$out/keel/" || true); do
    awk -v p="$pid" '/VmHWM/ {printf "# keel serve pid %s peak RSS %.0f MiB\n", p, $2/1024}' "/proc/$pid/status" 2>/dev/null || true
  done
}

# --- Keel, reference mode (the default)
start_keel
echo "# keel leader $leader (reference mode above 64 KiB)"
for b in 65536 1048576; do load "keel-ref" "$leader" "$peers/keel-kv.lua" "$b"; done
load "keel-upload" "$leader" "$here/keel-blob-put.lua" 16777216
rss | tee -a "$out/rss.txt"
stop_keel

# --- Keel, inline (threshold above the body; bodies up to the 4 MiB entry limit)
for f in "$out"/keel/node-*/config.json; do
  jq '.ref_threshold_bytes = 67108864 | .max_body_bytes = 3145728' "$f" > "$f.new" && mv "$f.new" "$f"
done
start_keel
echo "# keel leader $leader (inline)"
for b in 65536 1048576; do load "keel-inline" "$leader" "$peers/keel-kv.lua" "$b"; done
stop_keel

# --- etcd at 1 MiB
edir=$(mktemp -d -t etcd-blobs.XXXXXX)
"$peers/etcd-cluster.sh" start "$edir" >/dev/null
eleader=$("$peers/etcd-cluster.sh" leader "$edir")
load "etcd" "$eleader" "$peers/etcd-kv.lua" 1048576 || true
"$peers/etcd-cluster.sh" stop "$edir" >/dev/null || true

python3 - "$out/results.txt" <<'PY'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r'(\S+) bytes=(\d+) .*RESULT .*rps=([\d.]+) p50_us=(\d+) p90_us=\d+ p99_us=(\d+).*?non2xx=(\d+)', line)
    if m:
        rows[(m[1], int(m[2]))] = (float(m[3]), int(m[4]), int(m[5]), int(m[6]))
print(f"{'system':12} {'value':>8} | {'req/s':>8} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non2xx':>7}")
for (sysname, b), (rps, p50, p99, bad) in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    print(f"{sysname:12} {b//1024:>6}Ki | {rps:8.1f} {rps*b/1e6:8.1f} {p50/1e3:8.1f} {p99/1e3:8.1f} {bad:>7}")
ref, inl, etcd = rows.get(("keel-ref", 1048576)), rows.get(("keel-inline", 1048576)), rows.get(("etcd", 1048576))
if ref and etcd:
    print(f"1 MiB: reference mode / etcd = {ref[0]/etcd[0]:.2f}x (goal >= 3)")
if ref and inl:
    print(f"1 MiB: reference mode / Keel inline = {ref[0]/inl[0]:.2f}x (goal >= 1.5)")
PY
cat "$out/rss.txt"
echo "# raw results in $out"
