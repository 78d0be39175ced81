#!/usr/bin/env sh
# Builds {{name}}.wasm (componentize-py 0.25.1, as Keel's own Python plugin).
set -eu
cd "$(dirname "$0")"
componentize-py -d wit -w keel:plugin/state-machine componentize app -o {{name}}.wasm
