#!/usr/bin/env bash
# A private Docker engine for tests and development, in a folder of its own.
#   scripts/engine.sh start DIR   install docker.io (and iptables) if missing, start dockerd on DIR/docker.sock
#   scripts/engine.sh stop DIR    stop the dockerd started in DIR (by its pid, never by name)
# Prints the DOCKER_HOST to use on start.
set -euo pipefail
cmd=${1:?usage: engine.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: engine.sh start|stop DIR}")
sock="unix://$dir/docker.sock"

case "$cmd" in
start)
  if ! command -v dockerd >/dev/null; then
    echo "installing docker.io..." >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >&2
  fi
  if ! command -v iptables >/dev/null; then  # Sandbar confines sandboxes with it
    echo "installing iptables..." >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iptables >&2
  fi
  mkdir -p "$dir"
  if [ -f "$dir/dockerd.pid" ] && kill -0 "$(cat "$dir/dockerd.pid")" 2>/dev/null; then
    echo "$sock"; exit 0
  fi
  dockerd --host "$sock" --data-root "$dir/root" --exec-root "$dir/exec" \
    --pidfile "$dir/dockerd.pid" --storage-driver overlay2 >"$dir/dockerd.log" 2>&1 &
  for _ in $(seq 1 100); do
    if DOCKER_HOST="$sock" docker version >/dev/null 2>&1; then echo "$sock"; exit 0; fi
    sleep 0.2
  done
  echo "dockerd did not start; its log:" >&2; tail -20 "$dir/dockerd.log" >&2; exit 1
  ;;
stop)
  if [ -f "$dir/dockerd.pid" ]; then
    pid=$(cat "$dir/dockerd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  ;;
*) echo "usage: engine.sh start|stop DIR" >&2; exit 2 ;;
esac
