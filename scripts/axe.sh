#!/usr/bin/env bash
# Print the path of axe-core's axe.min.js (the accessibility engine the console's browser
# tests inject into each page), installed from the npm registry into .cache/ on first use.
#   scripts/axe.sh            -> /path/to/.cache/axe/node_modules/axe-core/axe.min.js
set -euo pipefail
version=4.10.3
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.cache/axe-$version"
path="$dir/node_modules/axe-core/axe.min.js"

if [ ! -f "$path" ]; then
  command -v npm >/dev/null || { echo "npm is missing (apt-get install npm)" >&2; exit 1; }
  mkdir -p "$dir"
  echo "installing axe-core $version..." >&2
  npm install --prefix "$dir" --no-audit --no-fund --silent "axe-core@$version" >&2
fi
[ -f "$path" ] || { echo "axe-core was not installed at $path" >&2; exit 1; }
echo "$path"
