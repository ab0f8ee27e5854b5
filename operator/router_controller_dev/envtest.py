"""A real, local Kubernetes control plane: etcd + kube-apiserver + kube-controller-manager.

Everything that touches the API is tested against a real API server, as
controller-runtime's envtest does: a mock cannot tell that a CRD schema is wrong,
that status needs the status subresource, that a watch expires with 410 or that RBAC
forbids a verb. The binaries are built from source by ``hack/build-control-plane.sh``
(once per machine, cached) unless ``KUBEBUILDER_ASSETS`` names a folder holding them.

The plane listens on loopback only, on free ports, with RBAC on. Admin access is a
static token in the ``system:masters`` group; ServiceAccount tokens work (a generated
signing key), so RBAC can be tested with real, least-privileged identities. The
controller-manager runs the garbage collector and the namespace controller, so owner
references and namespace deletion behave as in a cluster. Children are tied to this
process (``PR_SET_PDEATHSIG``): nothing outlives it. They run in their own process
group, so a terminal's Ctrl-C reaches only this process, which stops them in order.

``python -m router_controller_dev.envtest`` starts one and waits; ``make cluster`` uses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from router_controller_dev import prom, repo
from router_controller_dev.pki import serving_cert, write_private_key
from router_controller_dev.processes import die_with_parent

CRD_NAME = "staticroutes.production-stack.vllm.ai"


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started; the message says what to do."""


def find_binaries() -> Path:
    """The folder holding etcd, kube-apiserver and kube-controller-manager (built if needed)."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        folder = Path(assets)
        if (folder / "kube-apiserver").exists() and (folder / "etcd").exists():
            return folder
        raise ControlPlaneError(
            f"KUBEBUILDER_ASSETS={assets} does not hold kube-apiserver and etcd; "
            "unset it to build the control plane from source"
        )
    try:
        script = repo.root() / "hack" / "build-control-plane.sh"
    except repo.RepoNotFound as err:
        raise ControlPlaneError(
            f"no control plane binaries: set KUBEBUILDER_ASSETS to a folder with "
            f"kube-apiserver, kube-controller-manager and etcd ({err})"
        ) from err
    result = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise ControlPlaneError(f"{script} failed (exit {result.returncode}); see above")
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _control_plane_pki(folder: Path) -> None:
    """The API server's CA and serving certificate, and the ServiceAccount signing key."""
    serving_cert(
        folder,
        name="apiserver",
        ca_name="envtest-ca",
        common_name="kube-apiserver",
        dns_names=("localhost",),
        ips=("127.0.0.1", "10.0.0.1"),
    )  # tests sign client certificates with its ca.key
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_private_key(folder / "sa.key", sa_key)
    (folder / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def kubeconfig_text(
    server: str,
    ca_file: Path,
    token: str | None = None,
    user: str = "admin",
    *,
    credentials: dict[str, Any] | None = None,
    **cluster: Any,
) -> str:
    """A kubeconfig (JSON is valid YAML) for ``server``.

    The user authenticates with ``token``, or with ``credentials`` (a kubeconfig
    ``user`` entry: ``tokenFile``, ``exec``, client certificates...); ``cluster`` adds
    fields to the cluster entry (``proxy-url``, ...).
    """
    if (token is None) == (credentials is None):
        raise ValueError("give either a token or credentials")
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "envtest",
                    "cluster": {"server": server, "certificate-authority": str(ca_file), **cluster},
                }
            ],
            "users": [{"name": user, "user": credentials or {"token": token}}],
            "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": user}}],
            "current-context": "envtest",
        },
        indent=2,
    )


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver (+ kube-controller-manager) on loopback."""

    workdir: Path
    binaries: Path
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    apiserver_port: int = field(default_factory=free_port)
    controller_manager_port: int = field(default_factory=free_port)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # Where Services get their cluster IPs. A loopback range lets a Service's cluster IP
    # be a server on this machine (EndpointSlices refuse loopback addresses).
    service_cidr: str = "10.0.0.0/24"
    # Appended to kube-apiserver's flags (a later flag wins), e.g. to turn API
    # Priority and Fairness on for a throttling test.
    apiserver_flags: tuple[str, ...] = ()
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, *, controller_manager: bool = True, timeout: float = 60.0) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        _control_plane_pki(pki)
        (pki / "tokens.csv").write_text(f'{self.admin_token},admin,admin,"system:masters"\n')
        self.kubeconfig.write_text(kubeconfig_text(self.server, self.ca_file, self.admin_token))
        self._start_etcd()
        self._wait(f"{self.etcd_url}/health", timeout, name="etcd")
        self.start_apiserver(timeout=timeout)
        if controller_manager:
            self._start_controller_manager()

    def stop(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            self._stop(name)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_apiserver(self, *, timeout: float = 60.0) -> None:
        pki = self.workdir / "pki"
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                f"--service-cluster-ip-range={self.service_cidr}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                f"--service-account-issuer={self.server}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--max-requests-inflight=1000",
                "--max-mutating-requests-inflight=500",
                *self.apiserver_flags,
            ],
        )
        self._wait(f"{self.server}/readyz", timeout, name="kube-apiserver", auth=True)

    def stop_apiserver(self) -> None:
        self._stop("kube-apiserver")

    def _start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        self._spawn(
            "etcd",
            [
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

    def _start_controller_manager(self) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--controllers=garbage-collector-controller,namespace-controller",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.controller_manager_port}",
                f"--cert-dir={self.workdir / 'kcm-pki'}",
            ],
        )

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self._procs[name] = subprocess.Popen(
            [str(self.binaries / name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            # Not in the caller's process group: a Ctrl-C in the terminal goes to the
            # caller, which stops the plane in order (stop() or PDEATHSIG).
            process_group=0,
        )
        log.close()

    def _stop(self, name: str, timeout: float = 15.0) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _wait(self, url: str, timeout: float, *, name: str, auth: bool = False) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace").splitlines()[-5:]
                raise ControlPlaneError(
                    f"{name} exited with {proc.returncode}; its last lines:\n" + "\n".join(tail)
                )
            try:
                self.get(url, auth=auth, timeout=2)
                return
            except (OSError, urllib.error.URLError) as err:
                last = str(err)
            time.sleep(0.1)
        raise ControlPlaneError(f"{name} not ready after {timeout:.0f}s ({last})")

    # -- helpers for tests and tools ---------------------------------------------------

    def get(self, url: str, *, auth: bool = True, timeout: float = 10.0) -> bytes:
        """GET ``url`` (a full URL or a path on the API server) as admin."""
        if url.startswith("/"):
            url = self.server + url
        request = urllib.request.Request(url)  # noqa: S310 - loopback URLs we built
        if auth:
            request.add_header("Authorization", f"Bearer {self.admin_token}")
        context = self._ssl_context() if url.startswith("https") else None
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            body: bytes = response.read()
            return body

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this plane; raises with its stderr when ``check`` fails."""
        result = subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def compact_etcd(self) -> int:
        """Compact etcd at its current revision, so older watch resourceVersions get 410."""
        status = json.loads(self._etcd_post("/v3/kv/range", {"key": "AA==", "limit": 1}))
        revision = int(status["header"]["revision"])
        self._etcd_post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def _etcd_post(self, path: str, body: dict[str, object]) -> bytes:
        request = urllib.request.Request(  # noqa: S310 - loopback etcd
            self.etcd_url + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            data: bytes = response.read()
            return data

    def request_total(self, verbs: tuple[str, ...] = ("POST", "PUT", "PATCH", "DELETE")) -> int:
        """Sum of ``apiserver_request_total`` for the given verbs (the server's own count)."""
        samples = prom.samples(self.get("/metrics").decode(), ("apiserver_request_total",))
        return int(sum(value for _, labels, value in samples if labels.get("verb") in verbs))

    def request_count(self, verb: str, resource: str, subresource: str = "") -> int:
        """``apiserver_request_total`` for one verb on one resource (and subresource).

        E.g. ``request_count("PATCH", "staticroutes", "status")`` counts status patches
        of StaticRoutes, whatever their answer code, as the server saw them.
        """
        wanted = {"verb": verb, "resource": resource, "subresource": subresource}
        samples = prom.samples(self.get("/metrics").decode(), ("apiserver_request_total",))
        return int(
            sum(
                value
                for _, labels, value in samples
                if all(labels.get(k, "") == v for k, v in wanted.items())
            )
        )

    def install_crds(self) -> None:
        """Install the StaticRoute CRD from ``config/crd`` and wait until it is served."""
        self.kubectl("apply", "--server-side", "-k", str(repo.root() / "config" / "crd"))
        # "kubectl wait" fails outright while the new CRD has no conditions at all yet.
        deadline = time.monotonic() + 60
        while True:
            done = self.kubectl(
                "wait", "--for=condition=Established", f"crd/{CRD_NAME}", check=False
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"the StaticRoute CRD is not Established: {done.stderr.strip()}"
                )
            time.sleep(0.2)

    def token_for(self, service_account: str, namespace: str, seconds: int = 3600) -> str:
        """Mint a token for a ServiceAccount with the TokenRequest API."""
        result = self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={seconds}s"
        )
        return result.stdout.strip()

    def kubeconfig_for_token(self, token: str, path: Path, user: str = "user") -> Path:
        return self.write_kubeconfig(path, token=token, user=user)

    def write_kubeconfig(
        self,
        path: Path,
        *,
        token: str | None = None,
        credentials: dict[str, Any] | None = None,
        user: str = "user",
        server: str | None = None,
        **cluster: Any,
    ) -> Path:
        """A kubeconfig for this plane (or ``server``, e.g. a relay in front of it) at ``path``.

        See :func:`kubeconfig_text` for ``token``, ``credentials`` and ``cluster``.
        """
        text = kubeconfig_text(
            server or self.server, self.ca_file, token, user, credentials=credentials, **cluster
        )
        path.write_text(text)
        return path


@contextlib.contextmanager
def running(
    *,
    controller_manager: bool = True,
    workdir: Path | None = None,
    service_cidr: str = "10.0.0.0/24",
    apiserver_flags: tuple[str, ...] = (),
    crds: bool = False,
) -> Iterator[ControlPlane]:
    """Start a control plane in a temporary folder; stop it and remove the folder on exit.

    With ``crds``, the StaticRoute CRD is installed (and served) before it is handed out.
    """
    binaries = find_binaries()
    own_dir = workdir is None
    folder = workdir or Path(tempfile.mkdtemp(prefix="envtest-"))
    plane = ControlPlane(
        workdir=folder,
        binaries=binaries,
        service_cidr=service_cidr,
        apiserver_flags=apiserver_flags,
    )
    try:
        plane.start(controller_manager=controller_manager)
        if crds:
            plane.install_crds()
        yield plane
    finally:
        plane.stop()
        if own_dir:
            shutil.rmtree(folder, ignore_errors=True)


def versions(binaries: Path) -> dict[str, str]:
    """What each binary says its version is."""
    out = {}
    for name, flag in (
        ("kube-apiserver", "--version"),
        ("kube-controller-manager", "--version"),
        ("etcd", "--version"),
    ):
        result = subprocess.run(
            [str(binaries / name), flag], capture_output=True, text=True, check=False
        )
        out[name] = (result.stdout or result.stderr).strip().splitlines()[0]
    return out


def main() -> int:
    """Start a plane, print its kubeconfig, and wait for Ctrl-C."""
    started = time.monotonic()
    try:
        binaries = find_binaries()
    except ControlPlaneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    built = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="envtest-"))
    try:
        with running(workdir=folder) as plane:
            ready = time.monotonic()
            for name, version in versions(binaries).items():
                print(f"{name}: {version}")
            print(f"binaries: {binaries} (found/built in {built - started:.1f}s)")
            print(f"control plane ready in {ready - built:.1f}s at {plane.server}")
            print(f"export KUBECONFIG={plane.kubeconfig}")
            sys.stdout.flush()
            if "--print-only" in sys.argv:
                return 0
            stop = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop)
            signal.sigwait(stop)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
