# Shared by the benchmark scripts (sourced): finding the leader of a `keel dev` cluster.

# The URL of the node of the cluster in DIR that leads with the kv plugin active, if any.
keel_leader() { # dir
  local u s
  for u in $(jq -r '.nodes[].url' "$1/cluster.json" 2>/dev/null); do
    s=$(curl -fsS "$u/v1/status" 2>/dev/null || true)
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
