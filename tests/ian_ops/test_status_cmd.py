"""`ian status` against a node serving real HTTP in the test's event loop.

The node runs (uvicorn on port 0, sequencer, checkpoints) in the test's task group; each `ian`
invocation runs in a worker thread through main(), the CLI's real error boundary.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest

from ian.config import load_settings
from ian.node import Node

pytestmark = pytest.mark.anyio

DEMO = "DEMO_TRADING_AGENT"
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
async def live_node(tmp_path: Path, packs):
    settings = load_settings(
        env={},
        overrides={
            "data_dir": tmp_path / "data",
            "api_host": "127.0.0.1",
            "api_port": 0,
            "p2p_port": 0,
            "ws_port": 0,
        },
    )
    node = Node.open(settings)
    async with anyio.create_task_group() as tg:
        bound = await tg.start(
            lambda task_status: node.run(handle_signals=False, task_status=task_status)
        )
        url = "http://{}:{}".format(*bound.api)
        async with httpx.AsyncClient(base_url=url) as c:
            for n in range(2):
                r = await c.post("/api/v1/contribute", json=packs.body(n))
                assert r.json()["accepted"] is True
            r = await c.post("/api/v1/contribute", json=packs.body(9, params=packs.rejected_params))
            assert r.json()["accepted"] is False
        yield node, url
        node.request_stop()


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("error: "), err
    assert all(line.startswith("  fix: ") for line in lines[1:]), err
    return lines[0]


async def test_status_json(live_node, ian) -> None:
    node, url = live_node
    code, out, err = await ian.off_loop("status", "--json", "--node-url", url)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["node_id"] == node.identity.node_id
    assert doc["height"] == 2 and doc["sync_lag"] == 0
    assert doc["contributions"] == {"received": 3, "accepted": 2, "rejected": 1}
    assert doc["goals"][DEMO]["log_size"] == 2
    assert doc["goals"][DEMO]["log_root"] == node.state.goals[DEMO].mmr.root().hex()


async def test_status_goal_json_via_env_url(live_node, ian, monkeypatch) -> None:
    _node, url = live_node
    monkeypatch.setenv("IAN_NODE_URL", url + "/")
    code, out, err = await ian.off_loop("status", DEMO, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["goal_id"] == DEMO and doc["log_size"] == 2
    assert doc["active_policy"]["log_index"] == 0  # equal scores: the earlier entry leads


async def test_status_text(live_node, ian) -> None:
    node, url = live_node
    code, out, err = await ian.off_loop("status", "--node-url", url)
    assert code == 0, err
    assert node.identity.node_id in out
    assert "height 2" in out
    assert "contributions: 3 received, 2 accepted, 1 rejected" in out
    assert DEMO in out

    code, out, err = await ian.off_loop("status", DEMO, "--node-url", url)
    assert code == 0, err
    assert f"log size 2  root {node.state.goals[DEMO].mmr.root().hex()}" in out
    assert "leader: #0" in out


async def test_status_unknown_goal_is_exit_7(live_node, ian) -> None:
    _, url = live_node
    code, out, err = await ian.off_loop("status", "NO_SUCH_GOAL", "--node-url", url)
    assert code == 7
    assert out == ""
    line = one_error_line(err)
    assert "404" in line and "NO_SUCH_GOAL" in line


async def test_status_against_a_dead_url_is_exit_6(ian) -> None:
    with socket.socket() as s:  # bound but not listening: connection refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        code, out, err = await ian.off_loop("status", "--node-url", url)
    assert code == 6
    assert out == ""
    line = one_error_line(err)
    assert "cannot reach the node" in line and url in line


# --------------------------------------------------------------------------- the one-shot GET


def _outcome(call) -> tuple:
    """What a client call gives: the JSON, or the error's kind and every field it reports."""
    from ian.errors import IanError

    try:
        return ("ok", call())
    except IanError as exc:
        return (type(exc).__name__, exc.message, exc.fix, *sorted(vars(exc).items()))


async def test_one_shot_get_answers_as_the_httpx_client_does(live_node) -> None:
    """get_json_once (http.client, what `ian status` uses) against NodeClient (httpx, every
    other command): the same JSON, the same refusal, the same unreachable error."""
    from ian_ops.client import NodeClient, get_json_once

    _, url = live_node
    with socket.socket() as s:  # bound but not listening: connection refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        for base, path in [
            (url, f"/api/v1/status/{DEMO}"),
            (url + "/", "/api/v1/goals"),
            (url, "/api/v1/status/NO_SUCH_GOAL"),
            (url, "/api/v1/nowhere"),
            (dead, "/api/v1/status"),
        ]:

            def light(base: str = base, path: str = path) -> tuple:
                return _outcome(lambda: get_json_once(base, path, timeout=5))

            def full(base: str = base, path: str = path) -> tuple:
                def call():
                    with NodeClient(base, timeout=5) as client:
                        return client.get_json(path)

                return _outcome(call)

            assert await anyio.to_thread.run_sync(light) == await anyio.to_thread.run_sync(full)


def test_one_shot_get_over_tls_verifies_as_httpx_does(tmp_path: Path, monkeypatch) -> None:
    """https: trusted through SSL_CERT_FILE both answer; a certificate nobody vouches for is
    refused by both (the same error)."""
    import datetime
    import http.server
    import ipaddress
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from ian_ops.client import NodeClient, get_json_once

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = json.dumps({"path": self.path, "pad": "x" * 3000}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if self.path.endswith("/chunked"):  # the body in chunks of 1000 bytes
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for at in range(0, len(body), 1000):
                    part = body[at : at + 1000]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/base"

        def both(path: str = "/api/v1/status") -> tuple[tuple, tuple]:
            def full():
                with NodeClient(url, timeout=5) as client:
                    return client.get_json(path)

            light = _outcome(lambda: get_json_once(url, path, timeout=5))
            return light, _outcome(full)

        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        for path in ("/api/v1/status", "/api/v1/chunked", "/api/v1/status/é x"):
            light, full = both(path)
            assert light == full, path
            assert light[0] == "ok" and light[1]["pad"] == "x" * 3000, path
        assert light[1]["path"] == "/base/api/v1/status/%C3%A9%20x"
        monkeypatch.delenv("SSL_CERT_FILE")
        for cert_dir in (None, tmp_path):  # certifi's bundle; a directory without the cert
            if cert_dir is not None:
                monkeypatch.setenv("SSL_CERT_DIR", str(cert_dir))
            light, full = both()
            assert light == full and light[0] == "NodeUnreachableError"
            assert "CERTIFICATE_VERIFY_FAILED" in light[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("from_config", [False, True], ids=["--node-url", "config"])
async def test_status_json_imports_no_pydantic_httpx_or_rich(
    live_node, from_config: bool, tmp_path: Path
) -> None:
    """What makes `ian status --json` slow to start stays out of it (bench/cli_bench.py has
    the time): Typer (ian_ops.status_fast answers without it), pydantic, httpx, Rich; without
    --node-url, also the settings loader (the port comes from the data dir's config.toml
    through ian_ops.light_config)."""
    import subprocess
    import sys
    from urllib.parse import urlsplit

    _, url = live_node
    env = {k: v for k, v in os.environ.items() if not k.startswith("IAN_")}
    argv = ["ian", "status", "--json"]
    if from_config:
        data = tmp_path / "elsewhere"
        data.mkdir()
        (data / "config.toml").write_text(f"api_port = {urlsplit(url).port}\n")
        env["IAN_DATA_DIR"] = str(data)
    else:
        argv += ["--node-url", url]
    code = (
        "import sys\n"
        f"sys.argv = {argv!r}\n"
        "from ian_ops.app import main\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        "    heavy = ('pydantic', 'httpx', 'rich', 'ian.config', 'typer')\n"
        "    heavy = [m for m in heavy if m in sys.modules]\n"
        "    sys.stderr.write(f'heavy={heavy}\\n')\n"
    )

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code],
            env={**env, "PYTHONPATH": str(SRC)},
            capture_output=True,
            text=True,
            timeout=60,
        )

    proc = await anyio.to_thread.run_sync(run)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["height"] == 2
    assert "heavy=[]" in proc.stderr
