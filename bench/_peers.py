"""Peer systems the sync benchmark compares hdsd with, each run replicated and durable:

- ``pg``: PostgreSQL primary + one synchronous standby (``synchronous_commit = on``,
  ``synchronous_standby_names``), rows ``(k text primary key, v bytea)``, psycopg 3;
- ``etcd``: three members (every put is a Raft commit: fsync on a majority), through the
  gRPC gateway's JSON API with the standard library's HTTP client (keep-alive);
- ``redis``: primary + replica, both ``appendonly yes`` / ``appendfsync always``, each put is
  ``SET`` then ``WAIT 1 0`` in one pipelined round trip (redis-py).

Every server runs in a directory of the caller's choice on 127.0.0.1, in its own process group,
and :meth:`Peer.stop` ends it (SIGTERM, then SIGKILL). A peer whose binaries or Python client are
missing raises :class:`PeerUnavailable` from :meth:`Peer.start`, with the reason to print; the
benchmark records it and goes on. Clients are synchronous: one per benchmark thread.
"""

from __future__ import annotations

import base64
import glob
import http.client
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from _harness import free_ports

KIB, MIB = 1 << 10, 1 << 20
START_TIMEOUT = 60.0


class PeerUnavailable(Exception):
    """The peer cannot run here (binaries or client library missing, or it failed to start)."""


class PeerClient(Protocol):
    def put(self, key: str, value: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def close(self) -> None: ...


class Peer:
    """A running peer system; subclasses fill in :meth:`_start`, :meth:`connect`."""

    system = "?"
    #: Largest value the peer accepts in one request (None: no limit below the sizes we use).
    max_size: int | None = None
    max_size_reason = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.info: dict[str, Any] = {}

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        raise NotImplementedError

    def connect(self) -> PeerClient:
        raise NotImplementedError

    def skip_reason(self, size: int) -> str | None:
        if self.max_size is not None and size > self.max_size:
            return self.max_size_reason
        return None

    def _spawn(self, argv: Sequence[str], log: str, **kw: Any) -> subprocess.Popen[bytes]:
        with open(self.root / log, "ab") as out:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """End every process started, newest first. Idempotent."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        self.procs.clear()

    def _check_alive(self) -> None:
        """Raise :class:`PeerUnavailable` (with the end of its log) if a server has exited."""
        for proc in self.procs:
            if proc.poll() is not None:
                tail = ""
                for log in sorted(self.root.glob("*.log")):
                    tail += f"\n--- {log.name}:\n" + log.read_text(errors="replace")[-800:]
                args = proc.args
                name = str(args[0]) if isinstance(args, list) else str(args)
                raise PeerUnavailable(f"{self.system}: {name} exited with {proc.returncode}"
                                      f"{tail}")

    def check(self) -> None:
        self._check_alive()


def _wait_for(what: str, ready: Callable[[], bool], peer: Peer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        peer._check_alive()
        try:
            if ready():
                return
        except Exception:  # not up yet: connection refused, not in sync, ...
            pass
        if time.monotonic() > deadline:
            raise PeerUnavailable(f"{peer.system}: {what} not ready after {START_TIMEOUT:.0f} s")
        time.sleep(0.1)


def _need(binary: str, *extra_dirs: str) -> str:
    found = shutil.which(binary)
    for pattern in extra_dirs:
        if found is None and (hits := sorted(glob.glob(os.path.join(pattern, binary)))):
            found = hits[-1]  # the newest version directory sorts last
    if found is None:
        raise PeerUnavailable(f"{binary} not found (run scripts/install-peers.sh)")
    return found


# -- PostgreSQL ------------------------------------------------------------------------------
class Postgres(Peer):
    system = "postgresql"

    def _start(self) -> None:
        initdb = _need("initdb", "/usr/lib/postgresql/*/bin")
        pgbin = os.path.dirname(os.path.realpath(initdb))  # not a /usr/local/bin symlink
        try:
            import psycopg
        except ImportError as exc:
            raise PeerUnavailable("python package psycopg missing (pip install "
                                  "'psycopg[binary]')") from exc
        # initdb refuses to run as root: the servers then run as the postgres user.
        as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            as_user = {"user": "postgres", "group": "postgres"}
            shutil.chown(self.root, "postgres", "postgres")
        primary, standby = self.root / "primary", self.root / "standby"
        self.port, sport = free_ports(2)

        def run(*argv: str) -> None:
            proc = subprocess.run(argv, capture_output=True, timeout=300, **as_user)
            if proc.returncode != 0:
                raise PeerUnavailable(f"postgresql: {argv[0]} failed: "
                                      f"{proc.stderr.decode(errors='replace')[-500:]}")

        run(f"{pgbin}/initdb", "-D", str(primary), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--no-sync")
        with open(primary / "postgresql.conf", "a") as conf:
            conf.write(f"""
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.root}'
max_connections = 200
wal_level = replica
max_wal_senders = 4
synchronous_commit = on
synchronous_standby_names = 'standby1'
fsync = on
max_wal_size = 4GB
""")
        self._spawn([f"{pgbin}/postgres", "-D", str(primary)], "primary.log", **as_user)
        _wait_for("primary", lambda: self._query("select 1", self.port) == 1, self)
        run(f"{pgbin}/pg_basebackup", "-h", "127.0.0.1", "-p", str(self.port), "-U",
            "postgres", "-D", str(standby), "-R", "-X", "stream", "--no-sync")
        with open(standby / "postgresql.auto.conf", "a") as conf:
            conf.write(f"port = {sport}\nprimary_conninfo = 'host=127.0.0.1 port={self.port} "
                       f"user=postgres application_name=standby1'\n")
        self._spawn([f"{pgbin}/postgres", "-D", str(standby)], "standby.log", **as_user)
        _wait_for("synchronous standby", lambda: self._query(
            "select count(*) from pg_stat_replication where sync_state = 'sync'",
            self.port) == 1, self)
        with psycopg.connect(self._dsn(self.port), autocommit=True) as conn:
            conn.execute("create table kv (k text primary key, v bytea)")
            # Random payloads do not compress: skip the attempt, as an imaging store would.
            conn.execute("alter table kv alter column v set storage external")
            version = conn.execute("show server_version").fetchone()
        self.info = {"version": version[0] if version else "?", "synchronous_commit": "on",
                     "standby": "streaming, synchronous (standby1)"}

    @staticmethod
    def _dsn(port: int) -> str:
        return f"host=127.0.0.1 port={port} user=postgres dbname=postgres"

    def _query(self, sql: str, port: int) -> Any:
        import psycopg

        with psycopg.connect(self._dsn(port), autocommit=True, connect_timeout=2) as conn:
            row = conn.execute(sql).fetchone()
            return row[0] if row else None

    def connect(self) -> PeerClient:
        return _PgClient(self._dsn(self.port))


class _PgClient:
    def __init__(self, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True)

    def put(self, key: str, value: bytes) -> None:
        self.conn.execute("insert into kv values (%s, %s) on conflict (k) do update "
                          "set v = excluded.v", (key, value))

    def get(self, key: str) -> bytes:
        row = self.conn.execute("select v from kv where k = %s", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return bytes(row[0])

    def close(self) -> None:
        self.conn.close()


# -- etcd ------------------------------------------------------------------------------------
class Etcd(Peer):
    system = "etcd"
    # --max-request-bytes defaults to 1.5 MiB for the whole request (key, value, base64 in the
    # JSON gateway is decoded first): 1 MiB values fit, 64 MiB ones are refused.
    max_size = 1 * MIB
    max_size_reason = "etcd refuses requests over --max-request-bytes (1.5 MiB by default)"

    def _start(self) -> None:
        etcd = _need("etcd")
        ports = free_ports(6)
        self.client_ports = ports[:3]
        peers = ",".join(f"m{i}=http://127.0.0.1:{ports[3 + i]}" for i in range(3))
        for i in range(3):
            self._spawn([
                etcd, "--name", f"m{i}", "--data-dir", str(self.root / f"m{i}"),
                "--listen-client-urls", f"http://127.0.0.1:{ports[i]}",
                "--advertise-client-urls", f"http://127.0.0.1:{ports[i]}",
                "--listen-peer-urls", f"http://127.0.0.1:{ports[3 + i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{ports[3 + i]}",
                "--initial-cluster", peers, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"bench-{os.getpid()}",
                # Every cell writes new revisions: keep few, and room for the full run.
                "--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000",
                "--quota-backend-bytes", str(8 << 30),
            ], f"m{i}.log")

        def healthy() -> bool:
            return all(_http_json(p, "/health", None, "GET").get("health") in ("true", True)
                       for p in self.client_ports)

        _wait_for("3-member cluster", healthy, self)
        version = _http_json(self.client_ports[0], "/version", None, "GET")
        self.info = {"version": version.get("etcdserver", "?"), "members": 3,
                     "api": "gRPC gateway JSON (/v3/kv/put, /v3/kv/range) over HTTP/1.1"}

    def connect(self) -> PeerClient:
        return _EtcdClient(self.client_ports[0])


def _http_json(port: int, path: str, body: dict[str, Any] | None, method: str = "POST",
               conn: http.client.HTTPConnection | None = None) -> dict[str, Any]:
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        payload = None if body is None else json.dumps(body).encode()
        c.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        resp = c.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"etcd {path}: HTTP {resp.status}: {data[:300]!r}")
        out: dict[str, Any] = json.loads(data)
        return out
    finally:
        if own:
            c.close()


class _EtcdClient:
    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def put(self, key: str, value: bytes) -> None:
        _http_json(self.port, "/v3/kv/put", {"key": _b64(key.encode()), "value": _b64(value)},
                   conn=self.conn)

    def get(self, key: str) -> bytes:
        out = _http_json(self.port, "/v3/kv/range", {"key": _b64(key.encode())},
                         conn=self.conn)
        kvs = out.get("kvs") or []
        if not kvs:
            raise KeyError(key)
        return base64.b64decode(kvs[0].get("value", ""))

    def close(self) -> None:
        self.conn.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- Redis -----------------------------------------------------------------------------------
class Redis(Peer):
    system = "redis"

    def _start(self) -> None:
        server = _need("redis-server")
        try:
            import redis
        except ImportError as exc:
            raise PeerUnavailable("python package redis missing (pip install redis)") from exc
        self.port, rport = free_ports(2)
        common = ["--bind", "127.0.0.1", "--protected-mode", "no", "--save", "",
                  "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"]
        for name, port, extra in (("primary", self.port, []),
                                  ("replica", rport, ["--replicaof", "127.0.0.1",
                                                      str(self.port)])):
            d = self.root / name
            d.mkdir(parents=True, exist_ok=True)
            self._spawn([server, "--port", str(port), "--dir", str(d), *common, *extra],
                        f"{name}.log")
        primary = redis.Redis("127.0.0.1", self.port, socket_timeout=5)
        replica = redis.Redis("127.0.0.1", rport, socket_timeout=5)
        try:
            _wait_for("replica in sync", lambda: (
                replica.info("replication").get("master_link_status") == "up"
                and primary.info("replication").get("connected_slaves") == 1), self)
            version = primary.info("server").get("redis_version", "?")
        finally:
            primary.close()
            replica.close()
        self.info = {"version": version, "appendfsync": "always (both)",
                     "ack": "SET then WAIT 1 0, pipelined"}

    def connect(self) -> PeerClient:
        return _RedisClient(self.port)


class _RedisClient:
    def __init__(self, port: int) -> None:
        import redis

        # WAIT 1 0 blocks until the replica has it: bound the wait by the socket timeout.
        self.r = redis.Redis("127.0.0.1", port, socket_timeout=120)

    def put(self, key: str, value: bytes) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.set(key, value)
        pipe.wait(1, 0)
        _, replicas = pipe.execute()
        if int(replicas) < 1:
            raise RuntimeError("redis: WAIT returned 0 replicas")

    def get(self, key: str) -> bytes:
        value = self.r.get(key)
        if value is None:
            raise KeyError(key)
        return value if isinstance(value, bytes) else str(value).encode()

    def close(self) -> None:
        self.r.close()


PEERS: dict[str, type[Peer]] = {"pg": Postgres, "etcd": Etcd, "redis": Redis}
SYSTEM_OF = {name: cls.system for name, cls in PEERS.items()}
