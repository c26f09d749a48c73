"""Servers the tests start themselves, on 127.0.0.1, and stop by PID (never `ray stop`, which would end
every Ray process on the machine): moto's S3 server, an MLflow tracking server, a slow proxy in front of it
and Ray nodes."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from pathlib import Path

import requests

BIN = Path(sys.executable).parent
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, requests.RequestException):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up within {timeout} s")


def stop_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """End a server started in its own session, with everything it spawned."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    try:  # children that outlived their parent
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def moto_s3(buckets=("banray", "mlflow")):
    """moto's S3 server in this process; sets the AWS variables so that this process, and the Ray
    and MLflow processes started after it, use it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*S3_CREDENTIALS, "AWS_ENDPOINT_URL_S3"]}
    os.environ.update({**S3_CREDENTIALS, "AWS_ENDPOINT_URL_S3": endpoint})
    client = boto3.client("s3")
    for bucket in buckets:
        client.create_bucket(Bucket=bucket)
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def mlflow_server(folder: Path, artifacts: str):
    """`mlflow server` with a SQLite backend and the given artifact destination; yields its URI."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(folder / "mlflow-server.log", "w")
    process = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{uri}/health", timeout=2).text.strip() == "OK", 90, "mlflow server")
        yield uri
    finally:
        stop_group(process)
        log.close()


# Ray's command line (`ray start ...`, `ray status ...`) with a node address of 127.0.0.1 kept as given (plain
# `ray start` resolves it to the machine's network address and its servers then listen on every interface);
# the node's processes get Ray's loopback switch through their environment. Private Ray APIs, for the tests'
# `ray start` nodes only: tests/test_cluster.py's loopback test fails if a Ray upgrade moves them.
RAY_CLI_ON_LOOPBACK = (
    "import os\n"
    "from ray._private import ray_constants, services\n"
    "os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = '0'\n"
    "services.resolve_ip_for_localhost = lambda host: host\n"
    "from ray.scripts.scripts import main\n"
    "main()\n"
)


def ray_start(temp_dir: Path, *, head_address: str | None, num_cpus: int, log: Path, **ports: int) -> subprocess.Popen:
    """`ray start --block` as its own process group: a head (head_address None) or a node joining one."""
    # Each node its own temp dir: nodes sharing one would clean up each other's runtime-env files.
    # Ray's CLI through banray.ray_internals: plain `ray start` turns 127.0.0.1 into the machine's network
    # address and its servers then listen on every interface.
    command = [sys.executable, "-c", RAY_CLI_ON_LOOPBACK, "start", "--block", f"--num-cpus={num_cpus}", "--node-ip-address=127.0.0.1",
               "--disable-usage-stats", "--object-store-memory=150000000", f"--temp-dir={temp_dir}"]
    if head_address is None:
        command += ["--head", "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
    else:
        command += [f"--address={head_address}"]
    command += [f"--{name.replace('_', '-')}={value}" for name, value in ports.items()]
    # Ray 2.60 clusters use token authentication; a joining node needs the head's token (~/.ray/auth_token).
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    return subprocess.Popen(command, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def node_ports() -> dict[str, int]:
    """Ports of one node, all free, so a test cluster never collides with another Ray on the machine."""
    names = ["node_manager_port", "object_manager_port", "metrics_export_port", "dashboard_agent_listen_port",
             "dashboard_agent_grpc_port", "runtime_env_agent_port"]
    return {name: free_port() for name in names}


def _process_tree(root: int) -> set[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:  # gone since listed
            continue
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


def _socket_owners(pids: set[int]) -> dict[str, int]:
    """Socket inode -> pid, for the sockets the processes `pids` hold."""
    owners = {}
    for pid in pids:
        for link in map(_link, _entries(Path(f"/proc/{pid}/fd"))):
            if link.startswith("socket:["):
                owners[link[8:-1]] = pid
    return owners


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:  # the process is gone
        return []


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:  # a file descriptor closed since it was listed
        return ""


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/tcp{,6}: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def listening_sockets(root: int) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket listening in process `root` or below it, read from /proc."""
    owners = _socket_owners(_process_tree(root))
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in owners:  # 0A: LISTEN
                hex_address, hex_port = local.split(":")
                found.append((str(_address(hex_address)), int(hex_port, 16), owners[inode]))
    return found


def command_name(pid: int) -> str:
    return _proc_text(pid, "comm").strip()


def command_line(pid: int) -> str:
    return _proc_text(pid, "cmdline").replace("\0", " ")


def _proc_text(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError:  # gone
        return ""


def on_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (isinstance(ip, ipaddress.IPv6Address) and bool(ip.ipv4_mapped) and ip.ipv4_mapped.is_loopback)


@contextmanager
def slow_proxy(upstream: str, answer):
    """An HTTP proxy on 127.0.0.1 in front of `upstream`, in a thread of this process. `answer(n)` says what
    its n-th request (from 0) gets: (seconds to wait, None) and then the upstream's answer, or (seconds to
    wait, status) and then that status with an MLflow error body, the request never forwarded. Yields its URI."""
    numbers = count()

    class Handler(BaseHTTPRequestHandler):
        def handle_one_request(self):
            self.close_connection = True
            super().handle_one_request()

        def forward(self):
            wait_s, status = answer(next(numbers))
            time.sleep(wait_s)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if status is not None:
                self.reply(status, b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "slow proxy"}',
                           {"Content-Type": "application/json"})
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            response = requests.request(self.command, upstream + self.path, data=body, headers=headers, timeout=60)
            kept = {k: v for k, v in response.headers.items()
                    if k.lower() not in ("connection", "transfer-encoding", "content-encoding", "content-length")}
            self.reply(response.status_code, response.content, kept)

        def reply(self, status, content, headers):
            try:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                pass

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

        def log_message(self, *args):
            pass

    with serving(Handler) as uri:
        yield uri


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]):
    """An HTTP server of `handler` on 127.0.0.1, in a thread of this process; yields its URI."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
