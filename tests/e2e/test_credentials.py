"""Credentials that rotate: exec plugins, token files, client certificates; TLS name, proxy.

The operator runs for months; the credentials it started with do not. Each test here
makes the old credential invalid for real (a ServiceAccount re-created: the API server
then refuses every token minted for the old one; a certificate file rewritten) and
checks that the operator fetches the new one and keeps working, or, when no new one
exists, says so on ``/readyz``. The module has a control plane of its own, so no other
operator reconciles its StaticRoutes.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import sys
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from router_controller.kube import Forbidden, Kube, Unauthorized
from router_controller.kubeconfig import ConfigError
from router_controller.metrics import Metrics
from router_controller_dev import envtest
from router_controller_dev.envtest import ControlPlane
from router_controller_dev.processes import OperatorProcess
from tests.e2e.leases import election_flags, leading
from tests.e2e.processes import Grants, Spawn, http_get, operator_account
from tests.e2e.support import admin_kube, create_route, staticroute, wait_condition, wait_for

ACCOUNT = "controller-manager"
LIFETIME = 4  # seconds the plugin says its tokens last

PLUGIN = """
import datetime, json, os, subprocess
token = subprocess.run(
    ["kubectl", "--kubeconfig=" + os.environ["ADMIN_KUBECONFIG"], "create", "token",
     os.environ["ACCOUNT"], "-n", os.environ["NAMESPACE"], "--duration=600s"],
    check=True, capture_output=True, text=True,
).stdout.strip()
with open(os.environ["RUNS"], "a") as runs:  # one line per run: the token minted
    runs.write(token + "\\n")
expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
    seconds=float(os.environ["LIFETIME"]))
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1",
    "kind": "ExecCredential",
    "status": {"token": token, "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")},
}))
"""


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    with envtest.running(crds=True) as plane:
        yield plane


@pytest.fixture(scope="module")
async def kube(control_plane: ControlPlane) -> AsyncIterator[Kube]:
    async with admin_kube(control_plane) as client:
        yield client


def kubeconfig_with(plane: ControlPlane, path: Path, user: dict[str, Any], **cluster: Any) -> Path:
    return plane.write_kubeconfig(path, credentials=user, user="u", **cluster)


def recreate_account(plane: ControlPlane, namespace: str) -> None:
    """Delete and create the ServiceAccount: every token minted for it so far is void.

    Its RoleBindings name it, so the new one holds the same rights.
    """
    plane.kubectl("delete", "serviceaccount", ACCOUNT, "-n", namespace)
    plane.kubectl("create", "serviceaccount", ACCOUNT, "-n", namespace)


async def rejected(plane: ControlPlane, token: str, tmp_path: Path) -> bool:
    """The API server answers this token with 401."""
    config = kubeconfig_with(plane, tmp_path / "probe-kubeconfig", {"token": token})
    client = await Kube.connect(kubeconfig=str(config), metrics=Metrics(process=False))
    try:
        await client.get("/version")
        await client.get("/api/v1/namespaces/default/configmaps", limit="1")
    except Unauthorized:
        return True
    except Forbidden:
        return False
    finally:
        await client.close()
    return False


async def readyz(process: OperatorProcess) -> tuple[int, str]:
    return await http_get(await process.probe_url("/readyz?verbose"))


def ran_since(path: Path, runs: int) -> bool:
    return len(tokens(path)) > runs


def tokens(path: Path) -> list[str]:
    """The tokens the plugin minted, one per run."""
    return path.read_text().splitlines() if path.exists() else []


async def test_exec_plugin_runs_again_as_tokens_expire_and_are_revoked(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    grants: Grants,
    operators: Spawn,
    tmp_path: Path,
) -> None:
    operator_account(grants, namespace, tmp_path / "unused", "manager-role")
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN)
    ran = tmp_path / "runs"
    env = {
        "ADMIN_KUBECONFIG": str(control_plane.kubeconfig),
        "ACCOUNT": ACCOUNT,
        "NAMESPACE": namespace,
        "RUNS": str(ran),
        "LIFETIME": str(LIFETIME),
    }
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin)],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "interactiveMode": "Never",
        }
    }
    config = kubeconfig_with(control_plane, tmp_path / "kubeconfig", user)
    # As deployed, with leader election: the Lease is renewed every second, so the
    # operator needs a valid token at all times, not only when a StaticRoute changes.
    process = operators(config, *election_flags(namespace, "lease"), f"--namespaces={namespace}")
    await leading(process)
    await process.logged("starting workers")
    await create_route(kube, staticroute("r-0", namespace))
    await wait_condition(kube, namespace, "r-0", "Ready", "True")
    for round_ in range(1, 4):
        minted = tokens(ran)
        recreate_account(control_plane, namespace)
        # The operator's current token (the plugin's last) is void from now on.
        await wait_for(
            partial(rejected, control_plane, minted[-1], tmp_path),
            what="the old account's tokens refused",
        )
        await create_route(kube, staticroute(f"r-{round_}", namespace))
        await wait_condition(kube, namespace, f"r-{round_}", "Ready", "True", timeout=60)
        # Past another expiry: the plugin ran again (on time, or after the 401).
        await wait_for(partial(ran_since, ran, len(minted)), what="the plugin to run again")
    assert len(tokens(ran)) > 3
    assert process.running
    assert process.find("lost leadership") is None
    status, text = await readyz(process)
    assert status == 200, text


async def test_token_file_is_read_again_after_a_401(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    grants: Grants,
    operators: Spawn,
    tmp_path: Path,
) -> None:
    operator_account(grants, namespace, tmp_path / "unused", "manager-role")
    token_file = tmp_path / "token"
    token_file.write_text(control_plane.token_for(ACCOUNT, namespace))
    config = kubeconfig_with(control_plane, tmp_path / "kubeconfig", {"tokenFile": "token"})
    process = operators(config, f"--namespaces={namespace}")
    await process.logged("starting workers")
    old_token = token_file.read_text()
    recreate_account(control_plane, namespace)
    await wait_for(lambda: rejected(control_plane, old_token, tmp_path), what="old token refused")
    token_file.write_text(control_plane.token_for(ACCOUNT, namespace))  # as a kubelet rotates it
    await create_route(kube, staticroute("r", namespace))
    await wait_condition(kube, namespace, "r", "Ready", "True", timeout=60)
    status, text = await readyz(process)
    assert status == 200, text


async def test_a_401_that_persists_fails_readyz(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    grants: Grants,
    operators: Spawn,
    tmp_path: Path,
) -> None:
    config = operator_account(grants, namespace, tmp_path / "kubeconfig", "manager-role")
    process = operators(config, f"--namespaces={namespace}")
    await process.logged("starting workers")
    status, text = await readyz(process)
    assert status == 200, text
    token = json.loads(config.read_text())["users"][0]["user"]["token"]
    control_plane.kubectl("delete", "serviceaccount", ACCOUNT, "-n", namespace)
    await wait_for(lambda: rejected(control_plane, token, tmp_path), what="the token refused")
    await create_route(kube, staticroute("r", namespace))  # its reconcile is refused: 401

    async def not_ready() -> str | None:
        status, text = await readyz(process)
        return text if status == 503 else None

    text = await wait_for(not_ready, what="/readyz failing")
    assert "[-]credentials failed" in text
    assert "[+]informers ok" in text
    assert process.running


# -- TLS and proxies --------------------------------------------------------------------


def client_certificate(plane: ControlPlane, user: str, cert: Path, key: Path) -> None:
    """A client certificate for ``user`` signed by the plane's client CA."""
    ca_key = serialization.load_pem_private_key(
        (plane.workdir / "pki" / "ca.key").read_bytes(), None
    )
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(plane.ca_file.read_bytes())
    own = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    signed = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user)]))
        .issuer_name(ca.subject)
        .public_key(own.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(ca_key, hashes.SHA256())
    )
    key.write_bytes(
        own.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(signed.public_bytes(serialization.Encoding.PEM))


async def user_seen(client: Kube) -> str:
    """The user name the API server authenticated (from its RBAC denial)."""
    try:
        await client.get("/api/v1/namespaces/default/secrets", limit="1")
    except Forbidden as err:
        return err.message.split('User "', 1)[1].split('"', 1)[0]
    return ""


async def test_client_certificate_files_are_reloaded_when_they_change(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    client_certificate(control_plane, "rotating-1", cert, key)
    user = {"client-certificate": str(cert), "client-key": str(key)}
    config = kubeconfig_with(control_plane, tmp_path / "kubeconfig", user)
    client = await Kube.connect(kubeconfig=str(config), metrics=Metrics(process=False))
    try:
        assert await user_seen(client) == "rotating-1"
        client_certificate(control_plane, "rotating-2", cert, key)  # as cert-manager renews
        await wait_for(lambda: sees(client, "rotating-2"), timeout=60, what="the new certificate")
    finally:
        await client.close()


async def sees(client: Kube, user: str) -> bool:
    return await user_seen(client) == user


async def test_tls_server_name_is_the_name_verified(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    admin = {"token": control_plane.admin_token}
    good = kubeconfig_with(
        control_plane, tmp_path / "good", admin, **{"tls-server-name": "localhost"}
    )
    bad = kubeconfig_with(
        control_plane, tmp_path / "bad", admin, **{"tls-server-name": "not-the-apiserver.example"}
    )
    client = await Kube.connect(kubeconfig=str(good), metrics=Metrics(process=False))
    try:
        assert (await client.get("/version"))["major"]
    finally:
        await client.close()
    client = await Kube.connect(kubeconfig=str(bad), metrics=Metrics(process=False))
    try:
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match="not-the-apiserver"):
            await client.get("/version")
    finally:
        await client.close()


class ConnectProxy:
    """A minimal HTTP CONNECT proxy on loopback that records where it tunnelled to."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT":
            writer.close()
            return
        self.tunnels.append(target)
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_proxy_url_is_used_or_refused(
    control_plane: ControlPlane, tmp_path: Path, operators: Spawn
) -> None:
    proxy = ConnectProxy()
    url = await proxy.start()
    admin = {"token": control_plane.admin_token}
    try:
        config = kubeconfig_with(control_plane, tmp_path / "http", admin, **{"proxy-url": url})
        client = await Kube.connect(kubeconfig=str(config), metrics=Metrics(process=False))
        try:
            assert (await client.get("/version"))["major"]
        finally:
            await client.close()
        assert proxy.tunnels == [control_plane.server.removeprefix("https://")]
    finally:
        await proxy.stop()

    socks = kubeconfig_with(
        control_plane, tmp_path / "socks", admin, **{"proxy-url": "socks5://127.0.0.1:1080"}
    )
    with pytest.raises(
        ConfigError, match=re.escape("proxy-url 'socks5://127.0.0.1:1080' is not supported")
    ):
        await Kube.connect(kubeconfig=str(socks), metrics=Metrics(process=False))
    process = operators(socks)
    assert await process.exit_code(timeout=60) == 1
    assert "use an http:// or https:// proxy" in process.output
