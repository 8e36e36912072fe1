"""A real PostgreSQL for tests: a throwaway cluster (Debian's ``postgresql`` binaries) in a temporary folder,
listening on a free loopback port with password authentication, as a production database would be reached."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import free_port

USER = "dagster"
PASSWORD = "testing-db-password"
DATABASE = "dagster"
# initdb refuses to run as root; Debian's package creates this account for the server
SERVER_ACCOUNT = "postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine (or no account to run them as)."""


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int

    def env(self) -> dict[str, str]:
        """The variables deploy/dagster.production.yaml reads its database from."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": DATABASE,
            "DAGSTER_PG_USER": USER,
            "DAGSTER_PG_PASSWORD": PASSWORD,
        }


def server_bindir() -> Path:
    """The newest installed ``/usr/lib/postgresql/<major>/bin`` holding ``initdb`` and ``pg_ctl``."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise PostgresUnavailable("no /usr/lib/postgresql/*/bin/initdb: install Debian's postgresql package")
    return found[-1]


def _as_server_account() -> list[str]:
    """The command prefix that runs the server binaries as a non-root account when this process is root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        raise PostgresUnavailable("running as root and no runuser to start PostgreSQL as another account")
    try:
        import pwd

        pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        raise PostgresUnavailable(f"running as root and no {SERVER_ACCOUNT!r} account to run PostgreSQL as") from None
    return ["runuser", "-u", SERVER_ACCOUNT, "--"]


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A fresh cluster with database ``dagster`` owned by user ``dagster`` (password auth over TCP on
    127.0.0.1); stopped and deleted on exit."""
    bindir = server_bindir()
    prefix = _as_server_account()
    folder = Path(tempfile.mkdtemp(prefix="cosmicman-pg-"))
    password_file = folder / "password"
    password_file.write_text(PASSWORD)
    if prefix:
        shutil.chown(folder, SERVER_ACCOUNT)
        shutil.chown(password_file, SERVER_ACCOUNT)
    port = free_port()
    try:
        _create_cluster(bindir, prefix, folder, port)
        yield PostgresServer("127.0.0.1", port)
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


def _create_cluster(bindir: Path, prefix: list[str], folder: Path, port: int) -> None:
    """initdb, start the server on ``port``, create the database; a failure raises with the server's log."""
    data, password_file = folder / "data", folder / "password"
    try:
        subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={password_file}"]
            + ["--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--encoding=UTF8", "--no-sync"],
            check=True,
            capture_output=True,
        )
        # loopback only; the socket lives in the cluster's folder, not /var/run/postgresql (not ours)
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -c fsync=off"
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "server.log")]
            + ["-w", "-t", "60", "start"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE],
            check=True,
            capture_output=True,
            env={**os.environ, "PGPASSWORD": PASSWORD},
        )
    except subprocess.CalledProcessError as exc:
        log = folder / "server.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"{exc.cmd[len(prefix)]} failed: {exc.stderr.decode()[-2000:]}\n{tail}") from exc
