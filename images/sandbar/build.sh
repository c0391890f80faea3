#!/usr/bin/env bash
# Build the image of Sandbar itself locally, with no registry: a Debian bookworm root
# filesystem from the package archive (mmdebstrap), Sandbar's wheel and its locked runtime
# dependencies (requirements/runtime.txt, hashes checked) in a virtual environment, then
# `docker import`. Also PostgreSQL's image for compose.yaml, from Debian's package.
#   images/sandbar/build.sh [sandbar|postgres|all]        (DOCKER_HOST honoured)
# Images: ${SANDBAR_IMAGE:-sandbar:local}, ${SANDBAR_POSTGRES_IMAGE:-sandbar-postgres:local}.
# Each carries a label with a hash of its inputs; an image whose label matches is kept.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=${SANDBAR_IMAGE_WORK:-$repo/images/.work}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SANDBAR_IMAGE=${SANDBAR_IMAGE:-sandbar:local}
SANDBAR_POSTGRES_IMAGE=${SANDBAR_POSTGRES_IMAGE:-sandbar-postgres:local}
BASE_PACKAGES=python3,python3-venv,ca-certificates,tini
mkdir -p "$work"

say() { echo "==> $*" >&2; }

hash_of() {  # the sha256 of the named files' contents and names
  (cd "$repo" && sha256sum "$@" | sha256sum | cut -c1-16)
}

current() {  # $1: image, $2: inputs hash; true when the image exists with that hash
  [ "$(docker image inspect -f '{{ index .Config.Labels "sandbar.inputs" }}' "$1" 2>/dev/null)" = "$2" ]
}

in_root() {  # $1: root, then a command to run there, in a clean environment
  local root=$1; shift
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}

rootfs() {  # $1: folder, $2: packages (comma-separated); a bookworm root, cached by its list
  local root=$1 packages=$2
  if [ -f "$root.done" ] && [ "$(cat "$root.done")" = "$packages" ]; then return; fi
  if ! command -v mmdebstrap >/dev/null; then  # CI: root on a fresh Debian machine
    say "installing mmdebstrap"
    apt-get -qq -o DPkg::Lock::Timeout=600 update >&2
    DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=600 install -y \
      --no-install-recommends mmdebstrap >&2
  fi
  say "mmdebstrap bookworm: $packages"
  rm -rf "$root" "$root.done"
  mmdebstrap --quiet --variant=minbase --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/{doc,man,locale,info}/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$root" "$MIRROR" >&2
  echo "$packages" >"$root.done"
}

build_sandbar() {
  local sources inputs base=$work/sandbar-base root=$work/sandbar-rootfs
  sources=$(cd "$repo" && git ls-files -co --exclude-standard -- pyproject.toml \
    domain application infrastructure interfaces projections | sort)
  # shellcheck disable=SC2086 # one word per file
  inputs=$(hash_of images/sandbar/build.sh requirements/runtime.txt $sources)
  if current "$SANDBAR_IMAGE" "$inputs"; then say "$SANDBAR_IMAGE is current"; return; fi

  # The base: Debian's Python and a virtual environment of the locked dependencies,
  # rebuilt only when they change.
  local locked
  locked="$BASE_PACKAGES $(hash_of requirements/runtime.txt)"
  if [ "$(cat "$base.locked" 2>/dev/null)" != "$locked" ]; then
    # The wheels are fetched by this machine's Python for itself: bookworm's is 3.11.
    python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
      echo "images/sandbar/build.sh: python3 here must be 3.11, as in the image" >&2; exit 1; }
    rootfs "$base" "$BASE_PACKAGES"
    # Wheels fetched here by this machine's pip (its index and certificates), for
    # this machine (python3.11 on x86_64 glibc, as the root), installed there offline.
    say "fetching the locked dependencies (requirements/runtime.txt)"
    rm -rf "$work/wheelhouse" && mkdir -p "$work/wheelhouse"
    python3 -m pip download --quiet --disable-pip-version-check --require-hashes \
      --only-binary=:all: \
      -d "$work/wheelhouse" -r "$repo/requirements/runtime.txt" >&2
    rm -rf "$base/opt/sandbar" "$base/tmp/req" && mkdir -p "$base/tmp/req"
    cp "$repo/requirements/runtime.txt" "$work"/wheelhouse/*.whl "$base/tmp/req/"
    in_root "$base" /usr/bin/python3 -m venv /opt/sandbar
    in_root "$base" /opt/sandbar/bin/pip install --quiet --no-cache-dir --no-index \
      --find-links /tmp/req --require-hashes -r /tmp/req/runtime.txt >&2
    rm -rf "$base/tmp/req"
    grep -q '^sandbar:' "$base/etc/passwd" || {
      echo 'sandbar:x:10001:10001:Sandbar:/var/lib/sandbar:/usr/sbin/nologin' >>"$base/etc/passwd"
      echo 'sandbar:x:10001:' >>"$base/etc/group"
    }
    echo "$locked" >"$base.locked"
  fi

  say "building Sandbar's wheel"
  rm -rf "$work/wheel" && mkdir -p "$work/wheel"
  (cd "$repo" && python3 -m pip wheel --quiet --no-deps --disable-pip-version-check \
    -w "$work/wheel" . >&2)
  rm -rf "$repo/build"
  rm -rf "$root" && cp -a "$base" "$root"
  cp "$work"/wheel/sandbar-*.whl "$root/tmp/"
  in_root "$root" /bin/sh -c '/opt/sandbar/bin/pip install --quiet --no-cache-dir \
    --disable-pip-version-check --no-deps --no-index /tmp/sandbar-*.whl && rm /tmp/sandbar-*.whl' >&2
  find "$root/opt/sandbar" -name __pycache__ -prune -o -name '*.pyc' -print0 | xargs -0r rm -f
  in_root "$root" /opt/sandbar/bin/python -m compileall -q /opt/sandbar/lib >/dev/null 2>&1 || true
  mkdir -p "$root/var/lib/sandbar" && chown 10001:10001 "$root/var/lib/sandbar"

  say "importing $SANDBAR_IMAGE"
  # Configured by SANDBAR_* variables only; the data folder is the user's home.
  tar -C "$root" -c . | docker import \
    -c 'ENV PATH=/opt/sandbar/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV PYTHONUNBUFFERED=1 LANG=C.UTF-8 HOME=/var/lib/sandbar SANDBAR_DATA_DIR=/var/lib/sandbar' \
    -c 'USER sandbar' \
    -c 'WORKDIR /var/lib/sandbar' \
    -c 'EXPOSE 8080' \
    -c 'ENTRYPOINT ["/usr/bin/tini", "--", "sandbar"]' \
    -c 'CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]' \
    -c "LABEL sandbar.inputs=$inputs" \
    - "$SANDBAR_IMAGE" >/dev/null
}

build_postgres() {
  local inputs root=$work/postgres-rootfs
  inputs=$(hash_of images/sandbar/build.sh images/postgres/entrypoint.sh)
  if current "$SANDBAR_POSTGRES_IMAGE" "$inputs"; then
    say "$SANDBAR_POSTGRES_IMAGE is current"; return
  fi
  rootfs "$root" "postgresql-15"
  install -m 0755 "$repo/images/postgres/entrypoint.sh" "$root/usr/local/bin/entrypoint.sh"
  mkdir -p "$root/var/lib/postgresql/data" "$root/run/postgresql"
  in_root "$root" chown -R postgres:postgres /var/lib/postgresql /run/postgresql
  chmod 0700 "$root/var/lib/postgresql/data"
  say "importing $SANDBAR_POSTGRES_IMAGE"
  tar -C "$root" -c . | docker import \
    -c 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 PGDATA=/var/lib/postgresql/data' \
    -c 'USER postgres' \
    -c 'EXPOSE 5432' \
    -c 'VOLUME /var/lib/postgresql/data' \
    -c 'ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]' \
    -c "LABEL sandbar.inputs=$inputs" \
    - "$SANDBAR_POSTGRES_IMAGE" >/dev/null
}

case "${1:-all}" in
  sandbar) build_sandbar ;;
  postgres) build_postgres ;;
  all) build_sandbar; build_postgres ;;
  *) echo "usage: images/sandbar/build.sh [sandbar|postgres|all]" >&2; exit 2 ;;
esac
