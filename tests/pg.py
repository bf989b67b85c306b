"""A throw-away PostgreSQL 15 cluster for tests: initdb + pg_ctl in a temp dir, on loopback.

initdb refuses to run as root, so as root the cluster is made and run by the ``postgres``
system user (``runuser``); otherwise by the current user."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PASSWORD = "s3cret-pw"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


class Cluster:
    """A running throw-away cluster: its URL, and the operations a cluster goes through."""

    def __init__(self, url: str, data: Path, opts: str, log: Path) -> None:
        self.url, self._data, self._opts, self._log = url, data, opts, log

    def _ctl(self, *args: str) -> None:
        subprocess.run(_as_owner(["pg_ctl", "-D", str(self._data), *args]), check=True, capture_output=True)

    def restart(self, mode: str = "fast") -> None:
        self._ctl("-o", self._opts, "-l", str(self._log), "-m", mode, "-w", "restart")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop")

    def start(self) -> None:
        self._ctl("-o", self._opts, "-l", str(self._log), "-w", "start")


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a ``postgresql+psycopg://`` URL (with a password) to a fresh, empty database."""
    with postgres_cluster() as cluster:
        yield cluster.url


@contextmanager
def postgres_cluster(max_connections: int = 60) -> Iterator[Cluster]:
    """A fresh cluster with an empty database ``tuner_test``; ``.url`` has a password."""
    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not on PATH")
    root = Path(tempfile.mkdtemp(prefix="tuner-pg-", dir="/tmp"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        shutil.chown(pwfile, "postgres")
    port = _free_port()
    subprocess.run(_as_owner(["initdb", "-D", str(data), "-U", "tuner", "--auth=scram-sha-256",
                              f"--pwfile={pwfile}", "-E", "UTF8"]), check=True, capture_output=True)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections={max_connections} -c fsync=off"
    subprocess.run(_as_owner(["pg_ctl", "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"]),
                   check=True, capture_output=True)
    try:
        import psycopg

        deadline = time.time() + 30
        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=port, user="tuner", password=PASSWORD,
                                     dbname="postgres", autocommit=True) as conn:
                    conn.execute("CREATE DATABASE tuner_test")
                break
            except psycopg.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        yield Cluster(f"postgresql+psycopg://tuner:{PASSWORD}@127.0.0.1:{port}/tuner_test", data, opts,
                      root / "log")
    finally:
        subprocess.run(_as_owner(["pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
