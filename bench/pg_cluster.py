"""A throw-away PostgreSQL cluster for the benchmarks and the long proof runs (as .ci/run makes
one for the tests): initdb into a temp directory, a Unix socket directory and a free port, as
the postgres user when run as root; stopped and removed on exit.

    with Cluster(fsync=True) as pg:
        url = pg.create_database()
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

PGBIN = Path(os.environ.get("WEBINAR_FLOWS_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


class Cluster:
    def __init__(self, *, fsync: bool = True, settings: dict[str, str] | None = None):
        self.fsync = fsync
        self.settings = settings or {}
        self.dir = Path(tempfile.mkdtemp(prefix="webinar-flows-pg-"))
        self.data = self.dir / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgresql://postgres@/postgres?host={self.dir}&port={self.port}"

    def _as_pg(self, *command: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)

    def __enter__(self) -> Cluster:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(self._as_pg(str(PGBIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                                   "-E", "UTF8", "--locale=C.UTF-8"), check=True, capture_output=True)
        options = {"listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": str(self.dir),
                   "fsync": "on" if self.fsync else "off", "max_connections": "100", **self.settings}
        line = " ".join(f"-c {k}={v}" for k, v in options.items())
        subprocess.run(self._as_pg(str(PGBIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "log"), "-w",
                                   "-o", line, "start"), check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def restart(self) -> None:
        subprocess.run(self._as_pg(str(PGBIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-l",
                                   str(self.data / "log"), "restart"), check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def create_database(self) -> str:
        import psycopg

        name = f"bench_{secrets.token_hex(4)}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.replace("/postgres?", f"/{name}?", 1)

    def __exit__(self, *exc: Any) -> None:
        subprocess.run(self._as_pg(str(PGBIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"),
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)
