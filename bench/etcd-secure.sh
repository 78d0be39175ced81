#!/usr/bin/env bash
# A 3-member etcd cluster on 127.0.0.1 with security on, as `keel-vs-etcd.sh -m secure`
# measures it: TLS on the client port, mutual TLS between members
# (`--peer-client-cert-auth`), authentication on, and a non-root user whose role may read and
# write the benchmark's keys (as Keel's benchmark user may command and query kv, nothing else).
#
#   etcd-secure.sh start DIR KEEL_BIN   # certificates from `keel certs` (ECDSA P-256, rcgen)
#   etcd-secure.sh stop  DIR
#
# After start: DIR/url (the leader's https URL), DIR/token (user bench's token for the JSON
# gateway's `Authorization` header), DIR/certs/ca.pem. Same ports as ../shared/peers'
# etcd-cluster.sh (ETCD_PORT_BASE, default 10000): run one at a time.
#
# Clients authenticate with the token over server-authenticated TLS, not with a client
# certificate (`--client-cert-auth`): wrk cannot present one, and the token is what Keel's
# clients use too, so both sides pay the same kind of check per request. (Hence no
# `--trusted-ca-file` on the client side either: etcd turns client certificate
# authentication on whenever it is given.)
set -euo pipefail
cmd=${1:-} dir=${2:-}
[[ -n "$dir" ]] || { echo "usage: $0 start DIR KEEL_BIN | stop DIR" >&2; exit 2; }
base=${ETCD_PORT_BASE:-10000}
cport() { echo $((base + $1 * 10000 + 2379)); }
pport() { echo $((base + $1 * 10000 + 2380)); }
root_pw=bench-root-pw bench_pw=bench-user-pw

ctl() { # etcdctl against every member, over TLS, as root once auth is on
  ETCDCTL_API=3 etcdctl --cacert "$dir/certs/ca.pem" \
    --endpoints "https://127.0.0.1:$(cport 0),https://127.0.0.1:$(cport 1),https://127.0.0.1:$(cport 2)" "$@"
}

start() {
  local keel=${1:?KEEL_BIN}
  mkdir -p "$dir"
  [[ -s "$dir/pids" ]] && { echo "refusing: $dir/pids exists (stop first)" >&2; exit 1; }
  "$keel" certs init "$dir/certs" --name etcd-bench > /dev/null
  # One certificate for the three members: they share 127.0.0.1, and it has both the
  # serverAuth and clientAuth usages that serving and peer mutual TLS need.
  "$keel" certs node 1 "$dir/certs" --host 127.0.0.1 --host localhost > /dev/null
  local cert="$dir/certs/node-1.pem" key="$dir/certs/node-1-key.pem" ca="$dir/certs/ca.pem"
  local cluster="" i n
  for i in 0 1 2; do cluster+="${cluster:+,}m$((i + 1))=https://127.0.0.1:$(pport "$i")"; done
  : > "$dir/pids"
  for i in 0 1 2; do
    n="m$((i + 1))"
    etcd --name "$n" --data-dir "$dir/$n.etcd" \
      --listen-client-urls "https://127.0.0.1:$(cport "$i")" \
      --advertise-client-urls "https://127.0.0.1:$(cport "$i")" \
      --listen-peer-urls "https://127.0.0.1:$(pport "$i")" \
      --initial-advertise-peer-urls "https://127.0.0.1:$(pport "$i")" \
      --initial-cluster "$cluster" --initial-cluster-token "bench-secure-$$" \
      --initial-cluster-state new \
      --cert-file "$cert" --key-file "$key" \
      --peer-cert-file "$cert" --peer-key-file "$key" --peer-trusted-ca-file "$ca" \
      --peer-client-cert-auth \
      --auth-token simple --auth-token-ttl 3600 \
      --logger zap --log-outputs stderr --log-level warn \
      > "$dir/$n.log" 2>&1 &
    echo $! >> "$dir/pids"
  done
  local deadline=$((SECONDS + 60))
  until ctl endpoint health > /dev/null 2>&1; do
    (( SECONDS < deadline )) || { echo "etcd (secure) not healthy after 60s; logs in $dir" >&2; tail -n 5 "$dir"/m*.log >&2; stop; exit 1; }
    sleep 0.5
  done
  ctl user add root --new-user-password "$root_pw" > /dev/null
  ctl user grant-role root root > /dev/null
  ctl auth enable > /dev/null
  local as_root=(--user "root:$root_pw")
  ctl "${as_root[@]}" role add bench > /dev/null
  ctl "${as_root[@]}" role grant-permission bench readwrite key- --prefix=true > /dev/null
  ctl "${as_root[@]}" user add bench --new-user-password "$bench_pw" > /dev/null
  ctl "${as_root[@]}" user grant-role bench bench > /dev/null
  local url
  url=$(ctl "${as_root[@]}" endpoint status -w json |
    jq -r '.[] | select(.Status.leader == .Status.header.member_id) | .Endpoint' | head -n1)
  [[ -n "$url" ]] || { echo "no etcd leader" >&2; stop; exit 1; }
  echo "$url" > "$dir/url"
  curl -fsS --cacert "$ca" -X POST "$url/v3/auth/authenticate" \
    -d "{\"name\":\"bench\",\"password\":\"$bench_pw\"}" | jq -er .token > "$dir/token"
}

stop() {
  [[ -f "$dir/pids" ]] || return 0
  local pids p
  pids=$(cat "$dir/pids")
  for p in $pids; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=0
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
    [[ $alive -eq 0 ]] && break
    sleep 0.2
  done
  for p in $pids; do kill -9 "$p" 2>/dev/null || true; done
  rm -f "$dir/pids"
}

case "$cmd" in
  start) start "${3:-}" ;;
  stop) stop ;;
  *) echo "usage: $0 start DIR KEEL_BIN | stop DIR" >&2; exit 2 ;;
esac
