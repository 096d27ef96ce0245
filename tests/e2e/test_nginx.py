"""deploy/nginx.conf in front of two ``roomcast serve`` processes: the repository's file,
with only its addresses, ports and certificate paths replaced, passes ``nginx -t`` and
carries WebSocket upgrades (TLS) to both processes, and a message crosses between them."""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.conftest import free_port, wait_for_port
from tests.e2e.conftest import Client

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def site_config(upstreams: list[int], http_port: int, https_port: int, cert: Path) -> str:
    """deploy/nginx.conf for this machine: the upstream lines, the listen ports (IPv4
    only) and the certificate paths replaced; the rest as shipped."""
    text = (DEPLOY / "nginx.conf").read_text()
    servers = "".join(
        f"    server 127.0.0.1:{port} max_fails=3 fail_timeout=10s;\n" for port in upstreams
    )
    text, n = re.subn(r"(    server 10\.0\.0\.\d+:8000 [^\n]*\n)+", servers, text)
    assert n == 1, "deploy/nginx.conf: the upstream's server lines moved"
    replacements = [
        ("    listen [::]:80;\n", ""),
        ("    listen [::]:443 ssl;\n", ""),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        ("/etc/letsencrypt/live/chat.example.com/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/chat.example.com/privkey.pem", str(cert.with_suffix(".key"))),
    ]
    for old, new in replacements:
        assert old in text, f"deploy/nginx.conf no longer has {old!r}"
        text = text.replace(old, new)
    return text


@pytest.fixture
def nginx_for(tmp_path: Path) -> Iterator[Any]:
    """``nginx_for(ports)``: nginx with deploy/nginx.conf in front of ``ports``, checked
    with ``nginx -t`` and started; its HTTPS port."""
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed: apt-get install nginx (this test runs it)")
    procs: list[subprocess.Popen[bytes]] = []
    root = tmp_path / "nginx"
    root.mkdir()
    cert = root / "site.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(cert.with_suffix(".key")), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip

    def start(ports: list[int]) -> int:
        https_port = free_port()
        (root / "roomcast.conf").write_text(site_config(ports, free_port(), https_port, cert))
        (root / "nginx.conf").write_text(
            "daemon off;\nworker_processes 1;\nuser root;\n"
            f"pid {root}/nginx.pid;\nerror_log {root}/error.log;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"  access_log {root}/access.log;\n"
            + "".join(
                f"  {kind}_temp_path {root}/{kind};\n"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            + f"  include {root}/roomcast.conf;\n}}\n"
        )
        args = [NGINX, "-p", str(root), "-c", str(root / "nginx.conf")]
        checked = subprocess.run([*args, "-t"], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        assert "test is successful" in checked.stderr
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_for_port(https_port, proc=proc)
        return https_port

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def room_sockets(server: Any) -> float:
    """The server's ``roomcast_connections{endpoint="room"}`` gauge."""
    key = (server.data_dir / "api_key").read_text().strip()
    request = urllib.request.Request(
        f"{server.http_url}/metrics", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    match = re.search(r'^roomcast_connections\{endpoint="room"\} (\S+)$', text, re.M)
    assert match, text[:2000]
    return float(match.group(1))


async def test_sockets_through_nginx_reach_both_processes(cluster, nginx_for):
    """Two sockets through nginx (wss, deploy/nginx.conf) land one on each process
    (least_conn) and a message sent on one reaches the other."""
    a, b = cluster(2)
    port = nginx_for([a.port, b.port])
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    room = "through nginx ✓"
    url = f"wss://127.0.0.1:{port}/ws/chat/{urllib.request.quote(room, safe='')}/"
    opened = []
    try:
        for _ in range(2):
            ws = await websockets.connect(
                url, subprotocols=["roomcast.v1"], ssl=context, open_timeout=10
            )
            opened.append(ws)
        first, second = (Client(ws) for ws in opened)
        for client in (first, second):
            await client.recv_type("joined")
        counts = await asyncio.gather(*(asyncio.to_thread(room_sockets, s) for s in (a, b)))
        assert counts == [1.0, 1.0], counts
        await first.send({"message": "across nginx"})
        for client in (first, second):
            assert [f["message"] for f in await client.messages(1)] == ["across nginx"]
    finally:
        for ws in opened:
            await ws.close()
