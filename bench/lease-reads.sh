#!/usr/bin/env bash
# Reads at c=64 against a 3-node Keel cluster: `linearizable` (ReadIndex), `lease` and
# `stale`, for one or more keel binaries in the same run (to price a change to the read
# path, e.g. the lease fix: old binary vs new), alternating binaries between reps.
#
#   bench/lease-reads.sh [-d SECONDS] [-r REPS] [-c CONC] [KEEL_BINARY ...]
#
# Without binaries it builds and uses this checkout's release `keel`. Loopback only;
# everything it starts it stops.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(cd "$here/.." && pwd)
peers=${PEERS:-$root/../shared/peers}
dur=10 reps=3 conc=64
while getopts "d:r:c:" o; do
  case $o in d) dur=$OPTARG ;; r) reps=$OPTARG ;; c) conc=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v jq >/dev/null || need+=(jq)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
bins=("$@")
if ((${#bins[@]} == 0)); then
  cargo build --release -q -p keel --bin keel --manifest-path "$root/Cargo.toml"
  bins=("${CARGO_TARGET_DIR:-$root/target}/release/keel")
fi
out=$(mktemp -d -t keel-reads.XXXXXX)
dev_pid=""
stop() { if [[ -n "$dev_pid" ]]; then kill -INT "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; dev_pid=""; fi; }
trap stop EXIT

for r in $(seq 1 "$reps"); do
  for i in "${!bins[@]}"; do
    bin=${bins[$i]}
    dir="$out/b$i-r$r"
    "$bin" dev --nodes 3 --dir "$dir" > "$dir.log" 2>&1 &
    dev_pid=$!
    leader=""
    for _ in $(seq 1 300); do leader=$(keel_leader "$dir"); [[ -n "$leader" ]] && break; sleep 0.1; done
    [[ -n "$leader" ]] || { echo "no leader for $bin" >&2; cat "$dir.log" >&2; exit 1; }
    # Prefill the keyspace so reads find values (the shared load's fill mode).
    wrk -t1 -c64 -d"${PREFILL_SECONDS:-8}s" -s "$peers/keel-kv.lua" "$leader" -- fill 10000 100 >/dev/null 2>&1 || true
    for mode in linearizable lease stale; do
      res=$(wrk -t1 -c"$conc" -d"${dur}s" --timeout 10s --latency -s "$here/keel-read.lua" "$leader" -- "$mode" 10000 2>&1 | grep '^RESULT' || echo "RESULT FAILED")
      echo "bin=$i rep=$r conc=$conc $res" | tee -a "$out/results.txt"
    done
    stop
  done
done

echo
echo "# median over $reps reps, c=$conc (bin: ${bins[*]})"
python3 - "$out/results.txt" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.search(r'bin=(\d+) .*mode=(\S+) .*rps=([\d.]+) p50_us=(\d+) p99_us=(\d+) .*non2xx=(\d+)', line)
    if m:
        b, mode, rps, p50, p99, bad = m.groups()
        rows.setdefault((int(b), mode), []).append((float(rps), int(p50), int(p99), int(bad)))
print(f"{'bin':>3} {'mode':<13} {'rps':>9} {'p50 ms':>7} {'p99 ms':>7} {'non2xx':>7}")
for (b, mode), v in sorted(rows.items()):
    med = lambda i: statistics.median(x[i] for x in v)
    print(f"{b:>3} {mode:<13} {med(0):>9.0f} {med(1)/1000:>7.2f} {med(2)/1000:>7.2f} {sum(x[3] for x in v):>7}")
PY
