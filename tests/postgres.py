"""A throwaway PostgreSQL cluster for the tests: ``initdb`` + ``pg_ctl`` in a temporary
directory, on a free loopback port, as an unprivileged user when the tests run as
root (PostgreSQL refuses to run as root).

One cluster per test session (:func:`start_cluster`); each test gets a database of
its own (:meth:`Cluster.new_database`), cloned from a template that already holds
foreman's schema, so a test pays neither ``initdb`` nor the migrations.

Missing PostgreSQL: the tests that need it skip, saying why; with
``FOREMAN_REQUIRE_POSTGRES=1`` (CI) they fail instead.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field

__all__ = ["Cluster", "PostgresMissing", "find_bindir", "start_cluster"]

UNPRIVILEGED = "nobody"


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine, or the cluster would not start."""


def find_bindir() -> str | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(os.path.dirname(os.path.realpath(on_path)))
    for directory in candidates:
        if all(os.access(os.path.join(directory, b), os.X_OK) for b in ("initdb", "pg_ctl")):
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Cluster:
    """A running cluster; ``url(name)`` is a database's ``postgresql://`` URL."""

    bindir: str
    root: str
    port: int
    prefix: list[str]  # runs a command as the cluster's owner
    _names: itertools.count = field(default_factory=lambda: itertools.count(1))

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://foreman@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(sql)

    def new_database(self) -> str:
        """A fresh database with foreman's schema; returns its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE foreman_template")
        return self.url(name)

    def empty_database(self) -> str:
        """A fresh database without foreman's schema; returns its URL."""
        name = f"e{os.getpid()}_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [*self.prefix, os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m",
             "immediate", "stop"],
            capture_output=True, check=False,
        )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def data(self) -> str:
        return os.path.join(self.root, "data")


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PostgresMissing(f"{' '.join(command[:4])}…: {done.stderr.strip()[-500:]}")


def start_cluster() -> Cluster:
    """initdb and start a cluster (fsync off: throwaway); raises :class:`PostgresMissing`."""
    bindir = find_bindir()
    if bindir is None:
        raise PostgresMissing("no PostgreSQL server (apt-get install postgresql)")
    root = tempfile.mkdtemp(prefix="foreman-pg-")
    prefix: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresMissing("running as root without runuser to drop privileges")
        prefix = [runuser, "-u", UNPRIVILEGED, "--"]
        os.chmod(root, 0o755)
        shutil.chown(root, user=UNPRIVILEGED)
    cluster = Cluster(bindir, root, _free_port(), prefix)
    _run([*prefix, os.path.join(bindir, "initdb"), "-D", cluster.data, "-U", "foreman",
          "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C"])  # fmt: skip
    options = (
        f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
    )
    _run([*prefix, os.path.join(bindir, "pg_ctl"), "-D", cluster.data, "-o", options,
          "-l", os.path.join(root, "log"), "-w", "-t", "30", "start"])  # fmt: skip
    try:
        _make_template(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _make_template(cluster: Cluster) -> None:
    from foreman.store.postgres import _migrate, connect

    cluster.admin("CREATE DATABASE foreman_template")
    with connect(cluster.url("foreman_template"), autocommit=True) as connection:
        _migrate(connection)
