# Shared by the benchmark scripts (sourced): the tools they need, finding the leader of a
# `keel dev` cluster.

# Installs (Debian packages) what the etcd comparisons need and the machine lacks.
bench_tools() {
  local need=()
  command -v wrk >/dev/null || need+=(wrk)
  command -v etcd >/dev/null || need+=(etcd-server)
  command -v etcdctl >/dev/null || need+=(etcd-client)
  command -v jq >/dev/null || need+=(jq)
  command -v curl >/dev/null || need+=(curl)
  if ((${#need[@]})); then
    echo "# installing ${need[*]}" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# The URL of the node of the cluster in DIR that leads with the kv plugin active, if any.
# $KEEL_CURL_ARGS: what curl needs for a TLS cluster with auth (`--cacert CA -H @FILE`).
keel_leader() { # dir
  local u s
  for u in $(jq -r '.nodes[].url' "$1/cluster.json" 2>/dev/null); do
    # shellcheck disable=SC2086
    s=$(curl -fsS ${KEEL_CURL_ARGS:-} "$u/v1/status" 2>/dev/null || true)
    if [[ $(jq -r '.role' <<<"$s" 2>/dev/null) == Leader ]] && jq -e '.plugins | index("kv")' <<<"$s" >/dev/null 2>&1; then
      echo "$u"; return
    fi
  done
}

# Waits up to 30 s for that leader and prints its URL; fails with LOG shown otherwise.
wait_keel_leader() { # dir log
  local leader="" i
  for i in $(seq 1 300); do
    leader=$(keel_leader "$1")
    [[ -n "$leader" ]] && { echo "$leader"; return 0; }
    sleep 0.1
  done
  echo "keel cluster in $1 did not elect a leader" >&2; cat "$2" >&2; return 1
}
