"""What a server loads at start: the docker SDK only where the container worker runs, and
authlib only where a sign-in provider is configured (each a good part of a start-up that
the tests pay some forty times a run)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

SERVER_MODULES = "interfaces.cli.main, interfaces.bootstrap, interfaces.http.app"


def test_a_server_without_worker_or_providers_loads_neither_docker_nor_authlib() -> None:
    code = (
        f"import sys, {SERVER_MODULES}\n"
        "from infrastructure.settings import Settings\n"
        "from infrastructure.sign_in_providers import providers\n"
        "assert providers(Settings.from_env({})) == {}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'docker', 'authlib', 'joserfc'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
