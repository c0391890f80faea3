#!/usr/bin/env bash
# Print the path of Debian's docker-compose (for tests/containers/test_image.py and
# compose.yaml). Installs the `docker-compose` package with apt-get when it is missing: CI
# runs this unattended, as root, on a fresh machine.
#   scripts/compose.sh            -> /usr/bin/docker-compose
set -euo pipefail
if ! command -v docker-compose >/dev/null; then
  sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "docker-compose is missing and this is not root" >&2; exit 1; }
    sudo=(sudo -n)
  fi
  echo "installing docker-compose..." >&2
  apt=(apt-get -qq -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y \
    --no-install-recommends docker-compose >&2
fi
command -v docker-compose
