"""A throwaway redis-server for the benchmarks' Prefect server (`--redis`): Prefect's messaging, cache, causal
ordering, lease storage and Docket on Redis (prefect-redis), as `deployments/scale.sh` runs it. With Redis the
Prefect server can run its background services as a process of their own (`prefect server services start`)
and several API worker processes (`prefect server start --workers N`, PostgreSQL only, which starts no services).

Named redis_server.py, not redis.py: the benchmarks run with bench/ first on sys.path, where a redis.py would
shadow the redis package.
"""

from __future__ import annotations

import shutil
import socket
import sys
import time
from pathlib import Path

from deployments.stack import Stack
from webhook.ports import free_port


def start_redis(stack: Stack, work: Path) -> dict[str, str]:
    """redis-server on a free port under `work` (no persistence); returns the Prefect server's settings for it."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("no redis-server: `apt-get install redis-server` (and `pip install prefect-redis`)")
    try:
        import prefect_redis  # noqa: F401 - only checks that it is installed
    except ModuleNotFoundError:
        sys.exit("prefect-redis is not installed: `.venv/bin/pip install prefect-redis==0.3.0`")
    data = work / "redis"
    data.mkdir(parents=True)
    port = free_port()
    stack.start(
        "redis",
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(data)],
        {},
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"redis-server did not start:\n{stack.log_tail('redis')}")
        time.sleep(0.2)
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_HOST": "127.0.0.1",
        "PREFECT_REDIS_MESSAGING_PORT": str(port),
        "PREFECT_REDIS_MESSAGING_DB": "0",
        "PREFECT_SERVER_DOCKET_URL": f"redis://127.0.0.1:{port}/1",
    }
