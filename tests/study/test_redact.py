"""Passwords in storage URLs never reach output, whether or not the URL is well formed."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize("url, secrets", [
    ("postgresql://tuner:ab@PW@127.0.0.1:1/db", ["ab@PW", "PW"]),  # an unescaped @ in the password
    ("postgresql://tuner:pa/ss:w0rd@127.0.0.1:1/db", ["pa/ss:w0rd", "w0rd"]),  # / and : in the password
    ("postgresql://tuner@127.0.0.1:1/db?password=topsecret", ["topsecret"]),
])
@pytest.mark.parametrize("via", ["flag", "env"])
def test_no_part_of_a_password_is_printed(url, secrets, via):
    args = ["status", "--storage", url] if via == "flag" else ["status"]
    proc = run_cli(*args, env={"TUNER_STORAGE": url} if via == "env" else None, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("tuner: error:"), proc.stderr
    for secret in secrets:
        assert secret not in proc.stdout + proc.stderr, proc.stderr


def test_redact_removes_pieces_a_library_echoes():
    from tuner.study.storage import redact, remember_secrets

    remember_secrets("postgresql+psycopg://tuner:ab@PW@127.0.0.1/db")
    assert "PW" not in redact("failed to resolve host 'PW@127.0.0.1'")
    assert redact("a table of PWD values") == "a table of PWD values"  # short pieces only where they stand alone
