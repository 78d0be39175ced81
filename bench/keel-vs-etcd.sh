#!/usr/bin/env bash
# The headline benchmark: a 3-node Keel cluster (kv plugin) against a 3-member etcd cluster,
# both on this machine, fsync on for both, driven by the same wrk load (../shared/peers).
#
#   bench/keel-vs-etcd.sh [-d SECONDS] [-r REPS] [-c "1 16 64"] [-m "plain secure"]
#
# Prints each side's RESULT lines, then a table: throughput and p50/p99 per concurrency and
# the Keel/etcd ratios (median over reps); then the ceilings: the same load against one
# process with no consensus at all (host/examples/ceiling.rs: hyper + a HashMap), puts with a
# group-committed fdatasync (the durable ceiling) and reads without (the no-fsync ceiling),
# the bounds any 3-replica system on these cores lives under; then issue #14's four ratios
# and Keel's CPU time per 1,000 puts at c=64 on each node (from /proc/PID/stat).
#
# -m picks the modes, each run for both systems (default: plain). `secure`: TLS to clients,
# mutual TLS between members, authentication on, the load sent with a token of a user
# allowed only the benchmark's plugin / keys: Keel from `keel dev --tls --auth` (user bench,
# role command+query on kv), etcd from bench/etcd-secure.sh (peer mTLS, user bench with
# readwrite on key-*). With both modes, a last table gives each system's secure/plain
# ratios: the price of security, measured in the same run.
# Loopback only; everything it starts it stops.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(cd "$here/.." && pwd)
peers=${PEERS:-$root/../shared/peers}
dur=10 reps=2 concs="1 16 64" modes="plain"
while getopts "d:r:c:m:" o; do
  case $o in d) dur=$OPTARG ;; r) reps=$OPTARG ;; c) concs=$OPTARG ;; m) modes=$OPTARG ;; *) exit 2 ;; esac
done
for m in $modes; do [[ $m == plain || $m == secure ]] || { echo "-m: plain or secure, not $m" >&2; exit 2; }; done
[[ -x "$peers/kv-load.sh" ]] || { echo "peer scripts not found at $peers (set PEERS=)" >&2; exit 2; }

bench_tools

cargo build --release -q -p keel --bin keel --example ceiling --manifest-path "$root/Cargo.toml"
target=${CARGO_TARGET_DIR:-$root/target}
keel="$target/release/keel"
ceiling="$target/release/examples/ceiling"
out=$(mktemp -d -t keel-bench.XXXXXX)
dev_pid="" etcd_dir=""
cleanup() {
  if [[ -n "$dev_pid" ]]; then kill -INT "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; fi
  if [[ -n "$etcd_dir" ]]; then "$here/etcd-secure.sh" stop "$etcd_dir"; fi
}
trap cleanup EXIT

# CPU seconds (user + system) used so far by each `keel serve` of the cluster in DIR, one
# per line in node order (found by the config path on their command lines).
cpu_of_nodes() { # dir
  local tck f pid
  tck=$(getconf CLK_TCK)
  for f in "$1"/node-*/config.json; do
    for pid in /proc/[0-9]*; do
      if tr '\0' ' ' < "$pid/cmdline" 2>/dev/null | grep -q -- "--config $f"; then
        awk -v t="$tck" '{printf "%.3f\n", ($14 + $15) / t}' "$pid/stat"
        break
      fi
    done
  done
}

# --- Keel, in MODE; results in $out/keel-MODE.txt, CPU per node in $out/keel-MODE-cpu.txt
run_keel() { # mode
  local mode=$1 dir="$out/keel-$1" flags=() lua="$peers/keel-kv.lua"
  [[ $mode == secure ]] && flags=(--tls --auth)
  "$keel" dev --nodes 3 --dir "$dir" "${flags[@]}" > "$dir.log" 2>&1 &
  dev_pid=$!
  export KEEL_CURL_ARGS=""
  if [[ $mode == secure ]]; then
    # Wait for root's token, then make the benchmark's user: commands and queries on kv.
    for _ in $(seq 1 300); do [[ -s "$dir/admin.token" ]] && break; sleep 0.1; done
    export KEEL_CURL_ARGS="--cacert $dir/certs/ca.pem -H @$dir/curl-auth"
    printf 'Authorization: Bearer %s\n' "$(cat "$dir/admin.token")" > "$dir/curl-auth"
  fi
  local leader
  leader=$(wait_keel_leader "$dir" "$dir.log")
  echo "# keel ($mode) leader $leader"
  if [[ $mode == secure ]]; then
    local k=(env KEEL_CA="$dir/certs/ca.pem" KEEL_TOKEN_FILE="$dir/admin.token" "$keel" --endpoints "$leader")
    "${k[@]}" role grant bench command kv > /dev/null
    "${k[@]}" role grant bench query kv > /dev/null
    "${k[@]}" user add bench --role bench > /dev/null
    "${k[@]}" token create bench --label bench --out "$dir/bench.token" > /dev/null
    export KV_LUA="$lua" KV_AUTH="Bearer $(cat "$dir/bench.token")"
    lua="$here/with-auth.lua"
  fi
  local low
  low=$(tr ' ' '\n' <<<"$concs" | grep -vx 64 | tr '\n' ' ' || true)
  load() { "$peers/kv-load.sh" -u "$leader" -s "$lua" -d "$dur" -r "$reps" "$@"; }
  load -c "$low" -g "" | tee "$out/keel-$mode.txt"
  : > "$out/keel-$mode-cpu.txt"
  if grep -qw 64 <<<"$concs"; then
    local cpu0 cpu1 puts i
    mapfile -t cpu0 < <(cpu_of_nodes "$dir")
    load -c 64 -g "" | tee -a "$out/keel-$mode.txt"
    mapfile -t cpu1 < <(cpu_of_nodes "$dir")
    puts=$(grep -E '^rep=[0-9]+ put conc=64 ' "$out/keel-$mode.txt" | grep -o 'requests=[0-9]*' | cut -d= -f2 | awk '{s += $1} END {print s + 0}')
    for i in "${!cpu0[@]}"; do
      awk -v n=$((i + 1)) -v a="${cpu0[$i]}" -v b="${cpu1[$i]}" -v p="$puts" -v m="$mode" \
        'BEGIN {printf "cpu (%s) node=%d %.1f ms per 1,000 puts at c=64 (%d puts)\n", m, n, p ? (b - a) * 1e6 / p : 0, p}' >> "$out/keel-$mode-cpu.txt"
    done
  fi
  load -c "" -g 64 | tee -a "$out/keel-$mode.txt"
  # shellcheck disable=SC2086
  curl -fsS $KEEL_CURL_ARGS "$leader/metrics" | grep -E '^keel_(proposals|log_commits|applied_entries)_total' | sed 's/^/# leader /' || true
  cleanup; dev_pid=""
  unset KEEL_CURL_ARGS KV_LUA KV_AUTH
}

# --- etcd, in MODE; results in $out/etcd-MODE.txt
run_etcd() { # mode
  if [[ $1 == plain ]]; then
    "$peers/etcd-put-load.sh" -d "$dur" -r "$reps" -c "$concs" -g "64" | tee "$out/etcd-plain.txt"
    return
  fi
  etcd_dir="$out/etcd-secure"
  "$here/etcd-secure.sh" start "$etcd_dir" "$keel"
  local url
  url=$(cat "$etcd_dir/url")
  echo "# etcd (secure) leader $url; $(etcd --version 2>/dev/null | head -1)"
  KV_LUA="$peers/etcd-kv.lua" KV_AUTH="$(cat "$etcd_dir/token")" \
    "$peers/kv-load.sh" -u "$url" -s "$here/with-auth.lua" -d "$dur" -r "$reps" -c "$concs" -g 64 |
    tee "$out/etcd-secure.txt"
  "$here/etcd-secure.sh" stop "$etcd_dir"; etcd_dir=""
}

for mode in $modes; do
  run_keel "$mode"
  run_etcd "$mode"
done

# --- ceilings: durable puts, then reads with no fsync at all
ceiling() { # label "put concurrencies" "read concurrencies" flags...
  local label=$1 puts=$2 reads=$3; shift 3
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$ceiling_bin" --listen "127.0.0.1:$port" --dir "$out/ceiling-$label" "$@" > "$out/ceiling-$label.log" 2>&1 &
  ceiling_pid=$!
  for _ in $(seq 1 100); do curl -fsS -o /dev/null -X POST -d '{"op":"get","key":"k"}' "http://127.0.0.1:$port/v1/plugins/kv/query" 2>/dev/null && break; sleep 0.05; done
  "$peers/kv-load.sh" -u "http://127.0.0.1:$port" -s "$peers/keel-kv.lua" -d "$dur" -r "$reps" -c "$puts" -g "$reads" | tee "$out/ceiling-$label.txt"
  kill "$ceiling_pid" 2>/dev/null || true; wait "$ceiling_pid" 2>/dev/null || true
}
ceiling_bin=$ceiling
ceiling durable 64 "" --fsync
ceiling nofsync "" 64

# --- tables
python3 - "$out" "$modes" <<'PY'
import os, re, statistics, sys
out, modes = sys.argv[1], sys.argv[2].split()
bad = []
def load(name):
    runs, path = {}, os.path.join(out, name)
    if not os.path.exists(path):
        return runs
    for line in open(path):
        if 'RESULT FAILED' in line or re.search(r'non2xx=[1-9]', line):
            bad.append(f"{name}: {line.strip()}")
        m = re.match(r'rep=\d+ (put|read) conc=(\d+) .*RESULT .*rps=([\d.]+) p50_us=(\d+) p90_us=\d+ p99_us=(\d+)', line)
        if m:
            runs.setdefault((m[1], int(m[2])), []).append((float(m[3]), int(m[4]), int(m[5])))
    return {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in runs.items()}
durable, nofsync = load("ceiling-durable.txt"), load("ceiling-nofsync.txt")
c, n = durable.get(("put", 64)), nofsync.get(("read", 64))
def ratio(name, num, den, goal):
    if num is None or den is None or den == 0:
        print(f"  {name:44} not measured"); return
    print(f"  {name:44} {num/den:6.2f}   (goal {goal})")
results = {}
for mode in modes:
    keel, etcd = load(f"keel-{mode}.txt"), load(f"etcd-{mode}.txt")
    results[mode] = (keel, etcd)
    print(f"== {mode}" + (" (TLS, peers mutually authenticated, a token on every request)" if mode == "secure" else ""))
    print(f"{'op':5} {'conc':>4} | {'keel rps':>9} {'p50 ms':>7} {'p99 ms':>7} | {'etcd rps':>9} {'p50 ms':>7} {'p99 ms':>7} | {'rps x':>6} {'p99 /':>6}")
    for key in sorted(set(keel) | set(etcd)):
        k, e = keel.get(key), etcd.get(key)
        if not (k and e): continue
        print(f"{key[0]:5} {key[1]:>4} | {k[0]:9.0f} {k[1]/1e3:7.2f} {k[2]/1e3:7.2f} | {e[0]:9.0f} {e[1]/1e3:7.2f} {e[2]/1e3:7.2f} | {k[0]/e[0]:6.2f} {k[2]/max(e[2],1):6.2f}")
    print(f"issue #14's ratios, {mode} (medians of the reps):")
    kp64, ep64, kp1, ep1, kr64 = (keel.get(("put", 64)), etcd.get(("put", 64)), keel.get(("put", 1)),
                                  etcd.get(("put", 1)), keel.get(("read", 64)))
    ratio("put c=64 throughput / durable ceiling", kp64 and kp64[0], c and c[0], ">= 0.60")
    ratio("put c=64 p99 / etcd's p99", kp64 and kp64[2], ep64 and ep64[2], "<= 0.33")
    ratio("put c=1 throughput / etcd's", kp1 and kp1[0], ep1 and ep1[0], ">= 1.2")
    ratio("put c=1 p50 / etcd's p50", kp1 and kp1[1], ep1 and ep1[1], "<= 0.85")
    ratio("read c=64 throughput / no-fsync ceiling", kr64 and kr64[0], n and n[0], ">= 0.70")
    if e := ep64:
        print(f"  (10x etcd would be {10*e[0]:.0f} put/s" + (f" = {10*e[0]/c[0]:.2f}x the durable ceiling)" if c else ")"))
    cpu = os.path.join(out, f"keel-{mode}-cpu.txt")
    if os.path.exists(cpu):
        for line in open(cpu):
            print("keel " + line.strip())
if c:
    print(f"durable ceiling, put 64: {c[0]:.0f} req/s (p50 {c[1]/1e3:.2f} ms, p99 {c[2]/1e3:.2f} ms), one process, no consensus")
if n:
    print(f"no-fsync ceiling, read 64: {n[0]:.0f} req/s (p50 {n[1]/1e3:.2f} ms, p99 {n[2]/1e3:.2f} ms)")
if "plain" in results and "secure" in results:
    print("== the price of security: secure / plain, each system against itself")
    print(f"{'op':5} {'conc':>4} | {'keel rps':>8} {'keel p99':>8} | {'etcd rps':>8} {'etcd p99':>8}")
    (kp, ep), (ks, es) = results["plain"], results["secure"]
    for key in sorted(set(kp) & set(ks) & set(ep) & set(es)):
        print(f"{key[0]:5} {key[1]:>4} | {ks[key][0]/kp[key][0]:8.2f} {ks[key][2]/max(kp[key][2],1):8.2f} | "
              f"{es[key][0]/ep[key][0]:8.2f} {es[key][2]/max(ep[key][2],1):8.2f}")
for line in bad:
    print("NOT A RESULT (non-2xx or failed run): " + line)
PY
