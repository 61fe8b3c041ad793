"""A throwaway kube-apiserver (with etcd) on loopback for server-side dry runs of rendered charts.

Built from the Go modules by scripts/build-kube (the Kubernetes work); no kubelet, so nothing
runs: objects are only admitted, with strict field validation and the CRDs' CEL rules.
"""

import json
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

TOKEN = "chart-check-admin-token-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    def __init__(self, bin_dir):
        self.bin = Path(bin_dir)
        self.dir = tempfile.TemporaryDirectory(prefix="chart-check-kube-")
        self.procs = []
        self.ctx = ssl.create_default_context()
        # Its serving certificate is self-signed at start; this client only talks to loopback.
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.resources = {}

    def __enter__(self):
        try:
            return self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _start(self):
        d = Path(self.dir.name)
        subprocess.run(["openssl", "genrsa", "-out", d / "sa.key", "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", d / "sa.key", "-pubout", "-out", d / "sa.pub"], check=True, capture_output=True)
        (d / "tokens.csv").write_text(f"{TOKEN},admin,admin,system:masters\n")
        etcd_port, peer_port, self.port = free_port(), free_port(), free_port()
        self._spawn("etcd", [
            self.bin / "etcd", "--name", "check", "--data-dir", d / "etcd", "--unsafe-no-fsync",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}", f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=check=http://127.0.0.1:{peer_port}",
        ])
        self._spawn("kube-apiserver", [
            self.bin / "kube-apiserver", f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--secure-port={self.port}", f"--cert-dir={d / 'certs'}", f"--token-auth-file={d / 'tokens.csv'}",
            "--authorization-mode=RBAC", "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={d / 'sa.pub'}", f"--service-account-signing-key-file={d / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24", "--disable-admission-plugins=ServiceAccount",
        ])
        self._wait("kube-apiserver ready", 90, lambda: self.request("GET", "/readyz", raw=True)[0] == 200)
        return self

    def __exit__(self, *exc):
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.dir.cleanup()

    def _spawn(self, name, cmd):
        log = open(Path(self.dir.name) / f"{name}.log", "w")
        self.procs.append(subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT))

    def log_tail(self, name="kube-apiserver", n=20):
        return "\n".join((Path(self.dir.name) / f"{name}.log").read_text().splitlines()[-n:])

    def _wait(self, what, seconds, ready):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except (OSError, urllib.error.URLError):
                pass
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"{what}: a process exited\n{self.log_tail()}")
            time.sleep(0.25)
        raise RuntimeError(f"{what}: not within {seconds} s\n{self.log_tail()}")

    def request(self, method, path, body=None, raw=False):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {TOKEN}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as resp:
                text = resp.read().decode()
                return resp.status, (text if raw else json.loads(text))
        except urllib.error.HTTPError as e:
            text = e.read().decode()
            try:
                return e.code, json.loads(text)
            except json.JSONDecodeError:
                return e.code, {"message": text}

    def install_crds(self, docs):
        """Creates the CRDs (for real) and waits until each is established."""
        for doc in docs:
            status, body = self.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", doc)
            if status not in (201, 409):
                raise RuntimeError(f"CRD {doc['metadata']['name']}: {status} {body.get('message')}")
        for doc in docs:
            name = doc["metadata"]["name"]

            def established():
                _, crd = self.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
                conds = (crd.get("status") or {}).get("conditions") or []
                return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

            self._wait(f"CRD {name} established", 30, established)
        self.resources = {}

    def ensure_namespace(self, name):
        status, body = self.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        if status not in (201, 409):
            raise RuntimeError(f"namespace {name}: {status} {body.get('message')}")

    def _resource(self, api_version, kind):
        if api_version not in self.resources:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            status, body = self.request("GET", path)
            self.resources[api_version] = {} if status != 200 else {
                r["kind"]: (r["name"], r["namespaced"]) for r in body["resources"] if "/" not in r["name"]
            }
        return self.resources[api_version].get(kind)

    def dry_run(self, doc, namespace):
        """None when the server would admit `doc` (strict field validation), else its message."""
        found = self._resource(doc["apiVersion"], doc["kind"])
        if not found:
            return f"the API server serves no {doc['kind']} in {doc['apiVersion']}"
        plural, namespaced = found
        base = "/api/v1" if doc["apiVersion"] == "v1" else f"/apis/{doc['apiVersion']}"
        path = f"{base}/namespaces/{namespace}/{plural}" if namespaced else f"{base}/{plural}"
        status, body = self.request("POST", f"{path}?dryRun=All&fieldValidation=Strict", doc)
        if status in (200, 201):
            return None
        return f"{status} {body.get('message')}"
