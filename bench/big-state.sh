#!/usr/bin/env bash
# State bigger than memory (issue #16): for each state size, a fresh 3-node `keel dev`
# cluster on this machine (fsync on) is filled through the API with 1 KB values, then:
#
#   write     the fill itself at c=64 (throughput, p99) and each node's peak RSS meanwhile;
#   put       10 s of random overwrites at c=64 on the full state (throughput, p99);
#   catch-up  a follower killed, its data directory deleted, restarted empty: time until it
#             has applied what the leader had (MB/s of state), peak RSS of every node;
#   restart   the leader killed with SIGKILL and restarted: time to the first write the
#             cluster answers, time until the restarted node is serving again (its
#             /v1/status answers and it has applied what it had), and its peak RSS.
#
#   bench/big-state.sh [-s "100 1000"] [-c 64]       sizes in MB of values (4000 for 4 GB)
#
# Prints one line per size and phase, then a table against the issue's goals. RSS is
# sampled from /proc every 200 ms (VmRSS). Loopback only; everything it starts it stops.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(cd "$here/.." && pwd)
peers=${PEERS:-$root/../shared/peers}
sizes="100 1000" conc=64
while getopts "s:c:" o; do
  case $o in s) sizes=$OPTARG ;; c) conc=$OPTARG ;; *) exit 2 ;; esac
done
bench_tools
cargo build --release -q -p keel --bin keel --manifest-path "$root/Cargo.toml"
keel="${CARGO_TARGET_DIR:-$root/target}/release/keel"
out=$(mktemp -d -t keel-big.XXXXXX)
dev_pid="" sampler=""
pids=()
cleanup() {
  [[ -n "$sampler" ]] && kill "$sampler" 2>/dev/null || true
  [[ -n "$dev_pid" ]] && kill -INT "$dev_pid" 2>/dev/null || true
  for p in $(pgrep -f "$out/keel/node-" || true); do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$out/keel"
}
trap cleanup EXIT

node_pid() { pgrep -f "$out/keel/node-$1/config.json" | head -1; }
node_url() { jq -r ".nodes[] | select(.id == $1) | .url" "$out/keel/cluster.json"; }
status() { curl -fsS --max-time 2 "$(node_url "$1")/v1/status" 2>/dev/null || true; }
ms() { date +%s%3N; }
kill_node() { # id: SIGKILL, and wait until the process is gone (its port free again)
  local p; p=$(node_pid "$1" || true)
  [[ -z "$p" ]] && return 0
  kill -9 "$p" 2>/dev/null || true
  # Gone, or a zombie (its sockets closed) not yet reaped by its parent.
  while [[ -e /proc/$p ]] && [[ $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) != Z ]]; do sleep 0.05; done
}

# Samples each node's VmRSS into $out/rss.PHASE.ID (the peak, in KiB) until killed.
sample_rss() { # phase
  local phase=$1 i p kb
  while :; do
    for i in 1 2 3; do
      p=$(node_pid "$i" || true)
      [[ -z "$p" ]] && continue
      kb=$(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
      [[ -n "$kb" ]] || kb=0
      if (( kb > $(cat "$out/rss.$phase.$i" 2>/dev/null || echo 0) )); then echo "$kb" > "$out/rss.$phase.$i"; fi
    done
    sleep 0.2
  done
}
start_sampling() { sample_rss "$1" & sampler=$!; }
stop_sampling() { kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; sampler=""; }
peak() { # phase -> "n1 n2 n3" MiB
  local i s=""
  for i in 1 2 3; do s+="$(( $(cat "$out/rss.$1.$i" 2>/dev/null || echo 0) / 1024 )) "; done
  echo "${s% }"
}
leader_id() { # id of the node that leads with kv active
  local i s
  for i in 1 2 3; do
    s=$(status "$i")
    if [[ $(jq -r '.role' <<<"$s" 2>/dev/null) == Leader ]]; then echo "$i"; return; fi
  done
}
wait_applied() { # id index timeout_s -> 0 once node id has applied >= index
  local deadline=$(( $(date +%s) + $3 )) a
  while (( $(date +%s) < deadline )); do
    a=$(jq -r '.applied_index // 0' <<<"$(status "$1")" 2>/dev/null || echo 0)
    [[ "$a" =~ ^[0-9]+$ ]] && (( a >= $2 )) && return 0
    sleep 0.1
  done
  return 1
}

summary=()
for mb in $sizes; do
  keys=$(( mb * 1000 ))
  rm -rf "$out/keel" "$out"/rss.*
  "$keel" dev --nodes 3 --dir "$out/keel" >> "$out/keel-dev.log" 2>&1 &
  dev_pid=$!
  leader=$(wait_keel_leader "$out/keel" "$out/keel-dev.log")
  echo "# $mb MB: $keys keys of 1000 B, leader $leader, data in $out/keel"

  # --- write
  start_sampling write
  t0=$(ms)
  rm -f "$out/filled"
  wrk -t1 -c"$conc" -d7200s --timeout 10s --latency -s "$here/keel-fill.lua" "$leader" -- "$keys" 1000 "$out/filled" > "$out/fill.txt" 2>&1 &
  wrk_pid=$!
  while [[ ! -e "$out/filled" ]] && kill -0 "$wrk_pid" 2>/dev/null; do sleep 0.2; done
  t1=$(ms)
  kill -INT "$wrk_pid" 2>/dev/null || true
  wait "$wrk_pid" 2>/dev/null || true
  res=$(grep '^RESULT' "$out/fill.txt" || echo "RESULT FAILED: $(tail -3 "$out/fill.txt" | tr '\n' ' ')")
  stop_sampling
  echo "size=$mb write secs=$(( (t1 - t0) / 1000 )) $res peak_rss_mib=[$(peak write)]"
  write_rps=$(sed -n 's/.* rps=\([0-9.]*\).*/\1/p' <<<"$res")
  write_p99=$(sed -n 's/.* p99_us=\([0-9]*\).*/\1/p' <<<"$res")

  # --- put c=64 on the full state
  start_sampling put
  put=$(KEYSPACE=10000 VALUE_BYTES=1000 "$peers/kv-load.sh" -u "$leader" -s "$peers/keel-kv.lua" -d 10 -r 1 -c "$conc" -g "" | grep RESULT || echo "RESULT FAILED")
  stop_sampling
  echo "size=$mb put $put peak_rss_mib=[$(peak put)]"
  put_rps=$(sed -n 's/.* rps=\([0-9.]*\).*/\1/p' <<<"$put")
  put_p99=$(sed -n 's/.* p99_us=\([0-9]*\).*/\1/p' <<<"$put")

  # --- catch-up of an empty follower by snapshot. A node that lost its data directory must
  # not come back under its old membership (Raft assumes its acknowledged log is still
  # there; the leader ignores its rejections as stale): it is removed, wiped, started with
  # --join, and added again, as an operator replaces a disk.
  lid=$(leader_id)
  f=$(( lid % 3 + 1 ))
  lurl=$(node_url "$lid")
  kill_node "$f"
  "$keel" --endpoints "$lurl" member remove "$f" >> "$out/member.log" 2>&1
  rm -rf "$out/keel/node-$f/data"
  target=$(jq -r '.applied_index' <<<"$(status "$lid")")
  start_sampling catchup
  "$keel" serve --config "$out/keel/node-$f/config.json" --join "$lurl" >> "$out/keel/node-$f/keel.log" 2>&1 &
  t0=$(ms)
  "$keel" --endpoints "$lurl" member add "$f" "$(node_url "$f")" >> "$out/member.log" 2>&1
  if wait_applied "$f" "$target" 1800; then
    t1=$(ms)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", (b - a) / 1000}')
    mbs=$(awk -v m="$mb" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", m / ((b - a) / 1000)}')
  else
    secs="timeout" mbs=0
  fi
  "$keel" --endpoints "$lurl" member promote "$f" >> "$out/member.log" 2>&1 || true
  sleep 1
  stop_sampling
  echo "size=$mb catchup node=$f secs=$secs mb_per_s=$mbs peak_rss_mib=[$(peak catchup)]"

  # --- kill -9 of the leader and its restart
  lid=$(leader_id)
  had=$(jq -r '.applied_index' <<<"$(status "$lid")")
  start_sampling restart
  kill_node "$lid"
  t0=$(ms)
  "$keel" serve --config "$out/keel/node-$lid/config.json" >> "$out/keel/node-$lid/keel.log" 2>&1 &
  others=()
  for i in 1 2 3; do [[ $i != "$lid" ]] && others+=("$(node_url "$i")"); done
  first_write=timeout
  for _ in $(seq 1 600); do
    for u in "${others[@]}"; do
      code=$(curl -s -o /dev/null -w '%{http_code}' -L --max-time 2 -X POST "$u/v1/plugins/kv/commands" \
        -H 'content-type: application/json' -d '{"op":"put","key":"after-restart","value":"x"}' || true)
      if [[ $code == 200 ]]; then first_write=$(( $(ms) - t0 )); break 2; fi
    done
    sleep 0.05
  done
  if wait_applied "$lid" "$had" 600; then serving=$(( $(ms) - t0 )); else serving=timeout; fi
  sleep 0.5
  stop_sampling
  echo "size=$mb restart node=$lid first_write_ms=$first_write node_serving_ms=$serving peak_rss_mib=[$(peak restart)]"
  summary+=("$mb $write_rps $write_p99 $put_rps $put_p99 $mbs $serving $first_write $(peak write | tr ' ' '/') $(peak catchup | tr ' ' '/') $(peak restart | tr ' ' '/')")

  kill -INT "$dev_pid" 2>/dev/null || true
  wait "$dev_pid" 2>/dev/null || true
  for p in $(pgrep -f "$out/keel/node-" || true); do kill -9 "$p" 2>/dev/null || true; done
  dev_pid=""
done

echo
echo "| state MB | fill put/s (p99 ms) | put c=$conc /s (p99 ms) | catch-up MB/s | restart: node serving ms / first write ms | peak RSS MiB write / catch-up / restart (n1/n2/n3) |"
echo "|---|---|---|---|---|---|"
for row in "${summary[@]}"; do
  read -r mb wr wp pr pp mbs serving fw pw pc prs <<<"$row"
  awk -v mb="$mb" -v wr="$wr" -v wp="$wp" -v pr="$pr" -v pp="$pp" -v mbs="$mbs" -v sv="$serving" -v fw="$fw" -v pw="$pw" -v pc="$pc" -v prs="$prs" \
    'BEGIN {printf "| %s | %.0f (%.1f) | %.0f (%.1f) | %s | %s / %s | %s / %s / %s |\n", mb, wr, wp / 1000, pr, pp / 1000, mbs, sv, fw, pw, pc, prs}'
done
echo "# goals (issue #16): RSS <= 384 MiB per node at every size; catch-up >= 100 MB/s; restart at 4 GB within 2x of 100 MB; put at 4 GB >= 80% of 100 MB"
