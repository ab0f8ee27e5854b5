"""Credentials that rotate, without an API server: token files, exec plugins, TLS files.

The plugin here is a real program (run as the loader runs kubectl's credential
plugins); time is an injected clock. The API server side (401s, revoked tokens,
certificates it verifies) is tested in tests/e2e/test_credentials.py.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from router_controller.kubeconfig import ExecToken, FileToken, TlsFiles, load_client_config
from tests.unit.fakeclock import FakeClock

PLUGIN = """
import json, os, sys
count = int(open(sys.argv[1]).read() or 0) + 1 if os.path.exists(sys.argv[1]) else 1
open(sys.argv[1], "w").write(str(count))
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1",
    "kind": "ExecCredential",
    "status": {"token": f"token-{count}", "expirationTimestamp": sys.argv[2]},
}))
"""


async def test_token_file_is_read_every_period_and_on_refresh(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("one\n")
    clock = FakeClock(0.0)
    token = FileToken(str(path), period=60.0, clock=clock)
    assert await token.header() == "Bearer one"
    path.write_text("two")
    clock.set(59.0)
    assert await token.header() == "Bearer one"
    clock.set(60.0)
    assert await token.header() == "Bearer two"
    path.write_text("three")
    await token.refresh()  # after a 401: at once
    assert await token.header() == "Bearer three"
    path.unlink()  # a rotation caught half-way keeps the last good token
    await token.refresh()
    assert await token.header() == "Bearer three"


def kubeconfig(tmp_path: Path, user: dict[str, object]) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://10.9.8.7:8080"}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


async def test_token_file_beats_token_and_is_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file")
    config = await load_client_config(
        str(kubeconfig(tmp_path, {"token": "literal", "tokenFile": "token"}))
    )
    assert isinstance(config.credentials, FileToken)
    assert await config.credentials.header() == "Bearer from-file"


async def test_exec_plugin_runs_again_before_expiry_and_after_refresh(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN)
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    clock = FakeClock(0.0, wall=start)
    expiry = (start + datetime.timedelta(seconds=100)).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = await load_client_config(
        str(
            kubeconfig(
                tmp_path,
                {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": sys.executable,
                        "args": [str(plugin), str(runs), expiry],
                    }
                },
            )
        )
    )
    assert runs.read_text() == "1"  # the loader ran it once
    exec_token = config.credentials
    assert isinstance(exec_token, ExecToken)
    # The loader's answer is reused; a fresh instance on our clock shows the timing.
    token = ExecToken(
        {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
         "args": [str(plugin), str(runs), expiry]},
        tls=None, token="token-1", expiry=start + datetime.timedelta(seconds=100),
        clock=clock,
    )  # fmt: skip
    assert await token.header() == "Bearer token-1"
    clock.set(79.0)
    assert await token.header() == "Bearer token-1"
    clock.set(80.0)  # 80 % of its life: run again
    assert await token.header() == "Bearer token-2"
    assert token.runs == 1
    await token.refresh()  # a 401: run again at once
    assert await token.header() == "Bearer token-3"


def self_signed(cert: Path, key: Path, name: str) -> None:
    own = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    signed = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(own.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(own, hashes.SHA256())
    )
    key.write_bytes(
        own.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(signed.public_bytes(serialization.Encoding.PEM))


def test_tls_files_reload_when_they_change_and_keep_the_old_pair_if_half_written(
    tmp_path: Path,
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    self_signed(cert, key, "one")
    clock = FakeClock(0.0)
    tls = TlsFiles(
        ca_file=None, cert_file=str(cert), key_file=str(key), verify=True,
        server_name="api.example", check_period=10.0, clock=clock,
    )  # fmt: skip
    first = tls.context()
    self_signed(cert, key, "two")
    clock.set(9.0)
    assert tls.context() is first  # not looked at yet
    clock.set(10.0)
    second = tls.context()
    assert second is not first
    assert tls.reloads == 1
    # A new certificate next to the old key: unusable, the current context stays.
    other_key = tmp_path / "other.key"
    self_signed(tmp_path / "other.crt", other_key, "three")
    cert.write_bytes((tmp_path / "other.crt").read_bytes())
    clock.set(20.0)
    assert tls.context() is second
    key.write_bytes(other_key.read_bytes())  # the key lands: now it loads
    clock.set(30.0)
    assert tls.context() is not second
    assert tls.reloads == 2
    assert tls.server_name == "api.example"
