#!/usr/bin/env bash
# Healing a follower that missed blobs (issue #11, design §6's resend sweep), and memory
# during 1 GiB blobs, on a 3-node Keel cluster on this machine:
#
#   bench/blob-heal.sh [-g GIB] [-m BLOB_MIB]
#
# 1. This machine's loopback+disk bandwidth, measured now: a file of BLOB_MIB served over
#    loopback (python3 http.server) and fetched with curl into the same disk, synced.
# 2. A follower is killed; GIB GiB are written by reference (blobs of BLOB_MIB uploaded, each
#    attached to a kv put that keeps it); the follower is restarted and the time until it
#    has applied everything (so fetched every blob) gives its heal rate. Terms before and
#    after tell whether an election happened meanwhile.
# 3. A 1 GiB `keel blob put` and `keel blob get`: the CLI's peak RSS (/usr/bin/time) and each
#    node's peak RSS (VmHWM).
# Prints the ratios at the end. Everything it starts it stops; its data is deleted at the end.
set -euo pipefail
# BENCH_DIR: where lib.sh is, when this runs from a copy (never edit a script while it runs).
here=${BENCH_DIR:-$(cd "$(dirname "$0")" && pwd)}
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(cd "$here/.." && pwd)
gib=2 blob_mib=32
while getopts "g:m:" o; do
  case $o in g) gib=$OPTARG ;; m) blob_mib=$OPTARG ;; *) exit 2 ;; esac
done
command -v jq >/dev/null && command -v curl >/dev/null || bench_tools
keel="${KEEL:-${CARGO_TARGET_DIR:-$root/target}/release/keel}"
[[ -x "$keel" ]] || cargo build --release -q -p keel --bin keel --manifest-path "$root/Cargo.toml"
df -h "${TMPDIR:-/tmp}" | tail -1 | awk '{print "# disk free: " $4}'
out=$(mktemp -d -t keel-heal.XXXXXX)
dev_pid="" node_pid="" http_pid=""
cleanup() {
  [[ -n "$node_pid" ]] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null || true
  [[ -n "$http_pid" ]] && kill "$http_pid" 2>/dev/null && wait "$http_pid" 2>/dev/null || true
  if [[ -n "$dev_pid" ]]; then kill -INT "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; fi
  rm -rf "$out"
}
trap cleanup EXIT
now() { date +%s.%N; }

# --- 1. loopback + disk
head -c $((blob_mib << 20)) /dev/urandom > "$out/base.bin"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$out" && exec python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
http_pid=$!
sleep 1
mkdir -p "$out/copy"
t0=$(now)
for i in $(seq 1 8); do curl -fsS -o "$out/copy/c$i" "http://127.0.0.1:$port/base.bin"; done
sync -f "$out/copy/c1"
t1=$(now)
kill "$http_pid"; wait "$http_pid" 2>/dev/null || true; http_pid=""
rm -rf "$out/copy"
base_mbs=$(python3 -c "print(f'{8*$blob_mib/($t1-$t0):.0f}')")
echo "# loopback+disk (curl of a ${blob_mib} MiB file x8 into the same disk, synced): $base_mbs MiB/s"
# The disk alone (python's server may be the bound above): the same bytes copied, synced.
t0=$(now)
for i in $(seq 1 8); do dd if="$out/base.bin" of="$out/dd$i" bs=1M conv=fsync status=none; done
t1=$(now)
rm -f "$out"/dd*
disk_mbs=$(python3 -c "print(f'{8*$blob_mib/($t1-$t0):.0f}')")
echo "# disk alone (dd of the same file x8, fsync): $disk_mbs MiB/s"

# --- 2. a follower misses GIB GiB of blobs, then heals
"$keel" dev --nodes 3 --dir "$out/keel" >> "$out/keel-dev.log" 2>&1 &
dev_pid=$!
leader=$(wait_keel_leader "$out/keel" "$out/keel-dev.log")
urls=$(jq -r '.nodes[].url' "$out/keel/cluster.json")
follower=$(for u in $urls; do [[ $u != "$leader" ]] && echo "$u" && break; done)
fid=$(curl -fsS "$follower/v1/status" | jq -r .node_id)
fcfg="$out/keel/node-$fid/config.json"
fpid=$(pgrep -f -- "--config $fcfg" | head -1)
kill -9 "$fpid"
echo "# leader $leader; follower $follower (node $fid) killed"
count=$((gib * 1024 / blob_mib))
t0=$(now)
for i in $(seq 1 "$count"); do
  sha=$({ printf '%016d' "$i"; cat "$out/base.bin"; } | curl -fsS -T - -X PUT "$leader/v1/blobs" | jq -r .sha256)
  curl -fsS -H "Keel-Attach: $sha" -d "{\"op\":\"put\",\"key\":\"b$i\",\"value\":\"$sha\",\"keep\":true}" \
    "$leader/v1/plugins/kv/commands" >/dev/null
done
t1=$(now)
echo "# wrote $count blobs of $blob_mib MiB by reference in $(python3 -c "print(f'{$t1-$t0:.1f}')") s"
terms_before=$(for u in $urls; do [[ $u == "$follower" ]] || curl -fsS "$u/v1/status" | jq -r .term; done | sort -u | tr '\n' ' ')
commit=$(curl -fsS "$leader/v1/status" | jq -r .commit_index)
t0=$(now)
"$keel" serve --config "$fcfg" >> "$out/follower.log" 2>&1 &
node_pid=$!
while :; do
  s=$(curl -fsS "$follower/v1/status" 2>/dev/null || echo '{}')
  [[ $(jq -r '.applied_index // 0' <<<"$s") -ge $commit ]] && break
  sleep 0.05
done
t1=$(now)
terms_after=$(for u in $urls; do curl -fsS "$u/v1/status" | jq -r .term; done | sort -u | tr '\n' ' ')
heal_s=$(python3 -c "print(f'{$t1-$t0:.2f}')")
heal_mbs=$(python3 -c "print(f'{$count*$blob_mib/($t1-$t0):.0f}')")
held=$(find "$(dirname "$fcfg")/data/blobs" -maxdepth 1 -type f -name '????????????????????????????????????????????????????????????????' | wc -l)
echo "# follower healed: applied $commit (holds $held blobs) $heal_s s after it was started: $heal_mbs MiB/s"
echo "# terms before: $terms_before after: $terms_after"

# --- 3. 1 GiB through the CLI; peak RSS
head -c $((1 << 30)) /dev/urandom > "$out/big.bin"
/usr/bin/time -v "$keel" --timeout 600 --endpoints "$leader" blob put "$out/big.bin" -o json > "$out/put.json" 2> "$out/put.time"
sha=$(jq -r '.result.sha256 // .sha256' "$out/put.json")
/usr/bin/time -v "$keel" --timeout 600 --endpoints "$follower" blob get "$sha" "$out/back.bin" 2> "$out/get.time"
cmp -s "$out/big.bin" "$out/back.bin" && echo "# 1 GiB blob came back whole"
cli_put=$(awk '/Maximum resident/ {printf "%.0f", $6/1024}' "$out/put.time")
cli_get=$(awk '/Maximum resident/ {printf "%.0f", $6/1024}' "$out/get.time")
echo "# keel blob put 1 GiB: CLI peak RSS $cli_put MiB; keel blob get: $cli_get MiB"
for pid in $(pgrep -f "$out/keel/" || true); do
  awk -v p="$pid" '/VmHWM/ {printf "# keel serve pid %s peak RSS %.0f MiB\n", p, $2/1024}' "/proc/$pid/status" 2>/dev/null || true
done
echo "RESULT heal_mib_s=$heal_mbs loopback_disk_mib_s=$base_mbs ratio=$(python3 -c "print(f'{$heal_mbs/$base_mbs:.2f}')") (goal >= 0.5) disk_mib_s=$disk_mbs ratio_to_disk=$(python3 -c "print(f'{$heal_mbs/$disk_mbs:.2f}')") elections=$([[ "$terms_before" == "$terms_after" ]] && echo none || echo "terms $terms_before-> $terms_after") cli_put_rss_mib=$cli_put cli_get_rss_mib=$cli_get"
