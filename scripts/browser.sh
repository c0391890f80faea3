#!/usr/bin/env bash
# Print the path of a Chromium for the browser tests (driven by Playwright, which never
# downloads one here). Installs Debian's `chromium` with apt-get when it is missing: CI
# runs this unattended, as root, on a fresh machine.
#   scripts/browser.sh            -> /usr/bin/chromium
set -euo pipefail
path=/usr/bin/chromium

if [ ! -x "$path" ]; then
  sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "chromium is missing and this is not root" >&2; exit 1; }
    sudo=(sudo -n)
  fi
  echo "installing chromium..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt=(apt-get -qq -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y \
    --no-install-recommends chromium >&2
fi

if [ ! -x "$path" ]; then
  echo "chromium was not installed at $path" >&2
  exit 1
fi
echo "$path"
