#!/usr/bin/env bash
# Installs everything building and testing Keel needs that a fresh machine lacks.
# Idempotent: quick when everything is already there.
set -euo pipefail
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
