"""The team deployment files in deploy/, checked by their own tools and run for real.

nginx runs the shipped configuration on a loopback port in front of the live runtime (with a
fault proxy in between that slows the stream and records what reaches the runtime); only
addresses, the certificate and the token file are swapped for test ones.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from labkit import Client, runtime
from labkit.errors import ServerError
from labkit.faults import Fault, FaultProxy
from labkit.health import check_health

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
TOKEN = secrets.token_urlsafe(32)  # as long as the tokens deploy/README.md tells you to make
MODEL = runtime.CHAT_MODEL


def test_systemd_unit_verifies() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (DEPLOY / "labkit-runtime.service").read_text()
    assert "--port 11434" in unit and "IPAddressDeny=any" in unit
    # The unit names the install folder; point it at this checkout so its paths exist.
    project = DEPLOY.parent
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "labkit-runtime.service"
        copy.write_text(unit.replace("/opt/local-llm-lab", str(project)))
        done = subprocess.run(
            [tool, "verify", str(copy)], capture_output=True, text=True, timeout=60
        )
    # verify exits 0 even for unknown keys; any message at all is a finding.
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


@dataclass
class Gateway:
    url: str
    cert: str
    proxy: FaultProxy  # between nginx and the runtime: sees exactly what nginx forwards


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, valid for a day."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    request = "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
    names = "subjectAltName=IP:127.0.0.1"
    command = [
        "openssl",
        *request.split(),
        "-addext",
        names,
        "-keyout",
        str(key),
        "-out",
        str(cert),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return cert, key


def nginx_config(folder: Path, port: int, upstream: int) -> Path:
    """The shipped site file with test addresses, certificate and tokens, in a main config."""
    cert, key = self_signed_certificate(folder)
    tokens = folder / "tokens.map"
    tokens.write_text(f'"~^Bearer {TOKEN}$"  tester;\n')  # the line deploy/README.md makes
    site = (DEPLOY / "nginx/labkit.conf").read_text()
    swaps = {
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "server 127.0.0.1:11434;": f"server 127.0.0.1:{upstream};",
        "/etc/nginx/labkit-tokens.map": str(tokens),
        "/etc/nginx/snippets/labkit-proxy.conf": str(DEPLOY / "nginx/labkit-proxy.conf"),
        "/etc/ssl/labkit/fullchain.pem": str(cert),
        "/etc/ssl/labkit/privkey.pem": str(key),
        "/var/log/nginx/labkit-error.log": str(folder / "labkit-error.log"),
    }
    for old, new in swaps.items():
        assert old in site, f"deploy/nginx/labkit.conf no longer has {old!r}"
        site = site.replace(old, new)
    (folder / "labkit.conf").write_text(site)
    temp = "".join(
        f"    {kind}_temp_path {folder / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = folder / "nginx.conf"
    main.write_text(
        f"daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\n"
        f"error_log {folder / 'error.log'} warn;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n    access_log off;\n{temp}    include {folder / 'labkit.conf'};\n}}\n"
    )
    return main


@pytest.fixture(scope="module")
def gateway(embedded: runtime.RuntimeRecord) -> Iterator[Gateway]:
    """nginx with deploy/nginx/*.conf on a loopback port, in front of the live runtime."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    port = runtime.free_port()
    with (
        tempfile.TemporaryDirectory(prefix="labkit-nginx-") as name,
        FaultProxy(embedded.url) as proxy,
    ):
        folder = Path(name)
        folder.chmod(0o755)  # nginx's workers may run as another user
        main = nginx_config(folder, port, proxy.port)
        check = subprocess.run(
            [NGINX, "-t", "-c", str(main)], capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0, check.stderr
        server = subprocess.Popen(
            [NGINX, "-c", str(main)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 10
            while runtime.port_free(port) and time.monotonic() < deadline:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                time.sleep(0.02)
            yield Gateway(f"https://127.0.0.1:{port}", str(folder / "cert.pem"), proxy)
        finally:
            server.send_signal(signal.SIGQUIT)  # graceful stop of master and workers
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            if server.stderr:
                server.stderr.close()


def get(gateway: Gateway, path: str, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(gateway.url + path, headers=headers, verify=gateway.cert, timeout=10)


@pytest.mark.parametrize(
    "token",
    [None, "wrong-token", TOKEN.swapcase(), TOKEN.upper(), TOKEN + "x", TOKEN[:-1]],
    # The token is random per run: name the cases, so every xdist worker collects the same ids.
    ids=["none", "wrong", "swapped-case", "upper-case", "one-more", "one-less"],
)
def test_no_entry_without_the_exact_token(gateway: Gateway, token: str | None) -> None:
    ollama = get(gateway, "/api/tags", token)
    assert ollama.status_code == 401
    assert ollama.headers["WWW-Authenticate"].startswith("Bearer")
    assert "API key" in ollama.json()["error"]  # Ollama's shape
    openai = get(gateway, "/v1/models", token)
    assert openai.status_code == 401
    assert openai.json()["error"]["code"] == "invalid_api_key"  # OpenAI's shape
    assert not any(r.path in ("/api/tags", "/v1/models") for r in gateway.proxy.requests)


def test_the_token_lets_requests_through_but_goes_no_further(gateway: Gateway) -> None:
    gateway.proxy.clear()
    answer = get(gateway, "/", TOKEN)
    assert answer.status_code == 200 and answer.text == "Ollama is running"
    assert get(gateway, "/v1/models", TOKEN).status_code == 200
    assert gateway.proxy.wait_idle()
    seen = gateway.proxy.requests
    assert [r.path for r in seen] == ["/", "/v1/models"]
    assert all("Authorization" not in r.headers for r in seen)  # nginx keeps the token
    # The runtime refuses foreign Host names (DNS rebinding): nginx names it "localhost".
    assert {r.headers.get("Host") for r in seen} == {"localhost"}


@pytest.mark.parametrize(("path", "dialect"), [("/api/tags", "ollama"), ("/v1/models", "openai")])
def test_a_third_request_in_flight_gets_a_json_429_with_retry_after(
    gateway: Gateway, path: str, dialect: str
) -> None:
    gateway.proxy.clear()
    gateway.proxy.add(Fault.latency(2.0), path=path)  # keep two requests in flight
    answers: list[requests.Response] = []
    threads = [
        threading.Thread(target=lambda: answers.append(get(gateway, path, TOKEN))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.2)
    for thread in threads:
        thread.join(timeout=30)
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 429], statuses
    busy = next(a for a in answers if a.status_code == 429)
    assert busy.headers["Content-Type"].startswith("application/json")
    assert int(busy.headers["Retry-After"]) > 0
    body = busy.json()
    message = body["error"] if dialect == "ollama" else body["error"]["message"]
    assert "too many requests" in message


@pytest.mark.parametrize("dialect", ["ollama", "openai"])
def test_streams_pass_through_unbuffered(gateway: Gateway, dialect: str) -> None:
    gateway.proxy.clear()
    # The runtime's stream is slowed to 0.1 s per chunk: unbuffered, the first piece must
    # reach the client long before the last one.
    gateway.proxy.add(Fault.slow_stream(0.1), path="/api/chat")
    gateway.proxy.add(Fault.slow_stream(0.1), path="/v1/chat/completions")
    client = Client(gateway.url, dialect=dialect, model=MODEL, api_key=TOKEN)
    client.session.verify = gateway.cert
    with client:
        stream = client.stream("Count to five.", temperature=0, seed=1, max_tokens=8)
        arrivals = [time.perf_counter() for _ in stream]
        reply = stream.reply
    assert reply.text and len(arrivals) >= 4
    assert arrivals[-1] - arrivals[0] >= 0.1 * (len(arrivals) - 2)


def test_labkit_client_needs_the_key(gateway: Gateway) -> None:
    with Client(gateway.url, dialect="ollama", model=MODEL, api_key=TOKEN) as client:
        client.session.verify = gateway.cert
        assert client.chat("Say hi.", temperature=0, seed=1, max_tokens=5).text
    without = Client(gateway.url, dialect="ollama", model=MODEL)
    without.session.verify = gateway.cert
    with without, pytest.raises(ServerError) as caught:
        without.chat("Say hi.", max_tokens=5)
    assert caught.value.status == 401


def test_health_through_the_gateway(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    untrusted = check_health(gateway.url, "openai", MODEL, api_key=TOKEN)
    assert untrusted.status == "down"
    assert "certificate" in untrusted.reasons[0]  # TLS is checked, and the reason says so
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", gateway.cert)  # trust the test certificate
    assert check_health(gateway.url, "openai", MODEL, api_key=TOKEN).status == "up"
    assert check_health(gateway.url, "ollama", MODEL, api_key=TOKEN).status == "up"
    refused = check_health(gateway.url, "openai", MODEL)
    assert refused.status == "down"
    assert "HTTP 401 — the server wants an API key" in refused.reasons[0]
