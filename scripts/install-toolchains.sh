#!/usr/bin/env bash
# Installs everything building and testing Keel needs that a fresh machine lacks.
# Idempotent: quick when everything is already there.
set -euo pipefail
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# iproute2 (`ip`): the partition test puts each node in a network namespace of its own.
if ! command -v ip >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null ||
    echo "WARNING: iproute2 not installed; the partition test needs it" >&2
fi

# --- Guest toolchains for the Python and JavaScript plugins (plugins/kv-py, kv-js) ---
# Pinned versions. A failure here only warns: keel-plugin's tests then skip the
# Python/JS cases with a message instead of failing the whole run.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
COMPONENTIZE_PY_VERSION=0.25.1
JCO_VERSION=1.15.1   # with @bytecodealliance/componentize-js 0.23.0, pinned in plugins/kv-js/package-lock.json

install_componentize_py() {
  if componentize-py --version 2>/dev/null | grep -q "$COMPONENTIZE_PY_VERSION"; then
    return 0
  fi
  # Debian's own Python refuses global pip installs (PEP 668); a pyenv/upstream one
  # does not need the flag. Try the clean way first.
  python3 -m pip install --quiet "componentize-py==$COMPONENTIZE_PY_VERSION" ||
    python3 -m pip install --quiet --break-system-packages "componentize-py==$COMPONENTIZE_PY_VERSION"
  if command -v pyenv >/dev/null; then pyenv rehash; fi
  componentize-py --version
}

install_jco() {
  local dir="$ROOT/plugins/kv-js"
  if [ "$("$dir/node_modules/.bin/jco" --version 2>/dev/null)" = "$JCO_VERSION" ]; then
    return 0
  fi
  npm ci --prefix "$dir" --no-audit --no-fund
}

# --- The dashboard's browser test (host/tests/dashboard.rs) ---
# Debian's Chromium, driven by playwright-core (pinned in host/tests/dashboard/package-lock.json),
# which is given the browser's path and never downloads one of its own.
install_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}

install_playwright() {
  local dir="$ROOT/host/tests/dashboard"
  local want have
  want="$(node -p "require('$dir/package.json').dependencies['playwright-core']")"
  have="$(node -p "require('$dir/node_modules/playwright-core/package.json').version" 2>/dev/null || true)"
  [ "$have" = "$want" ] && return 0
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$dir" --no-audit --no-fund
}

# Registries have bad moments: try each install three times before giving up.
retry() { "$@" || { sleep 5; "$@"; } || { sleep 15; "$@"; }; }
retry install_componentize_py || echo "WARNING: componentize-py not installed; the Python plugin tests will be skipped" >&2
retry install_jco || echo "WARNING: jco not installed; the JavaScript plugin tests will be skipped" >&2
# Without these the browser test skips, or fails where KEEL_REQUIRE_BROWSER=1 (.ci/run).
retry install_chromium || echo "WARNING: chromium not installed; the dashboard's browser test needs it" >&2
retry install_playwright || echo "WARNING: playwright-core not installed; the dashboard's browser test needs it" >&2
