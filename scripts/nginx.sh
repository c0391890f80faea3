#!/usr/bin/env bash
# Print the path of nginx, for the tests that put Sandbar behind it as a reverse proxy
# (and the benchmarks that use it as a baseline). Installs Debian's `nginx` with apt-get
# when it is missing: CI runs this unattended, as root, on a fresh machine. The package's
# own service is not started (the tests run their own nginx with a config of their own).
#   scripts/nginx.sh            -> /usr/sbin/nginx
set -euo pipefail
path=/usr/sbin/nginx

if [ ! -x "$path" ]; then
  sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "nginx is missing and this is not root" >&2; exit 1; }
    sudo=(sudo -n)
  fi
  echo "installing nginx..." >&2
  apt=(apt-get -qq -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
  # policy-rc.d 101: the package must not start (or fail to start) a service of its own.
  policy=/usr/sbin/policy-rc.d
  made_policy=false
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod +x "$policy"
    made_policy=true
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >&2 || true
  status=0
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y \
    --no-install-recommends nginx-light >&2 \
    || "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y \
      --no-install-recommends nginx >&2 || status=$?
  if $made_policy; then "${sudo[@]}" rm -f "$policy"; fi
  [ "$status" = 0 ] || exit "$status"
fi

if [ ! -x "$path" ]; then
  echo "nginx was not installed at $path" >&2
  exit 1
fi
echo "$path"
