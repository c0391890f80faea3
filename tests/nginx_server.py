"""An nginx of its own, in a folder of its own, for the tests that put Sandbar behind it
(tests/test_nginx.py) and the benchmarks that use it as a baseline (bench/bench_proxy.py,
bench/bench_tunnel.py). ``body`` is what goes in its ``http`` block."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"  # (scripts/nginx.sh installs it there)

NGINX_COMMON = """
worker_processes 1;
daemon off;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
{body}
}}
"""


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def nginx(
    folder: Path, body: str, port: int, binary: str = NGINX
) -> Iterator[subprocess.Popen[bytes]]:
    """An nginx of its own (master and one worker) in ``folder``, listening on ``port``."""
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_COMMON.format(dir=folder, body=body))
    proc = subprocess.Popen(
        [binary, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "stderr.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 10
        while not port_answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (folder / "error.log").read_text(errors="replace")
                raise RuntimeError(f"nginx did not start:\n{log}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
