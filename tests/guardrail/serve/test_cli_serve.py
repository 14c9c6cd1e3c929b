"""`guardrail serve` refuses to open an unauthenticated endpoint beyond loopback, and validates its settings."""

import io

import pytest
from rich.console import Console

pytest.importorskip("fastapi")

from guardrail.cli.main import main
from guardrail.serve.server import is_loopback


def run_cli(*argv):
    buf = io.StringIO()
    code = main(list(argv), console=Console(file=buf, width=200, color_system=None))
    return code, buf.getvalue()


def test_non_loopback_host_without_a_key_is_refused(monkeypatch):
    monkeypatch.delenv("GUARDRAIL_API_KEY", raising=False)
    code, out = run_cli("serve", "--host", "0.0.0.0", "--port", "1")
    assert code == 2 and "refusing to serve on 0.0.0.0 without an API key" in out


def test_bad_settings_are_a_clear_error():
    code, out = run_cli("serve", "--max-batch-size", "0")
    assert code == 2 and "max_batch_size must be >= 1" in out


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.com")
