"""A throwaway PostgreSQL cluster for the benchmarks' Prefect server (`--database postgres`).

Prefect's documentation recommends PostgreSQL over SQLite for anything beyond light local use: SQLite takes
one writer at a time, and a burst of flow-run state changes queues behind it ("database is locked"). The
cluster lives in the benchmark's temporary folder, listens on 127.0.0.1 only, and is a child process of the
benchmark's `Stack`, so it is stopped by PID with everything else.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg

from deployments.stack import Stack
from webhook.ports import free_port

DATABASE = "prefect"


def pg_bin() -> Path:
    """Directory of initdb/postgres: UPSELL_SCALE_PG_BIN (as deployments/scale.sh), else the newest installed."""
    configured = os.environ.get("UPSELL_SCALE_PG_BIN")
    candidates = [configured] if configured else sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    sys.exit("no PostgreSQL binaries (initdb): `apt-get install postgresql` or set UPSELL_SCALE_PG_BIN")


def _as_cluster_owner(args: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def start_postgres(stack: Stack, work: Path) -> str:
    """initdb + postgres on a free port under `work`; returns the SQLAlchemy URL of its `prefect` database."""
    binaries, data, sockets = pg_bin(), work / "pgdata", work / "pgsock"
    data.mkdir(parents=True)
    sockets.mkdir(parents=True)
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        for path in (work, data, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    subprocess.run(
        _as_cluster_owner([str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        check=True, capture_output=True,
    )
    port = free_port()
    stack.start(
        "postgres",
        _as_cluster_owner([
            str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
            "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
        ]),
        dict(os.environ),
    )
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{DATABASE}"
    deadline = time.monotonic() + 60
    while True:
        try:
            asyncio.run(_create_database(port))
            return url
        except (OSError, asyncpg.exceptions.CannotConnectNowError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL did not start:\n{stack.log_tail('postgres')}") from None
            time.sleep(0.5)


async def _create_database(port: int) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
    try:
        await conn.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await conn.close()


def database_contents(url: str) -> tuple[int, dict[str, int]]:
    """Bytes of the `prefect` database on disk and rows per table."""

    async def read() -> tuple[int, dict[str, int]]:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            size = await conn.fetchval("SELECT pg_database_size(current_database())")
            tables = [r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            rows = {t: await conn.fetchval(f'SELECT count(*) FROM "{t}"') for t in tables}
        finally:
            await conn.close()
        return int(size), rows

    with ThreadPoolExecutor(1) as pool:  # callers may be inside an event loop already
        return pool.submit(asyncio.run, read()).result()
