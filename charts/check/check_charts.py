"""Checks the Helm charts under charts/ with real Helm and upstream schemas.

For every chart and every value set (defaults, every toggle on, the witness): helm-sdkpy's lint
(Helm's library), `helm lint --strict` and `helm template` (a Helm CLI built from the same Helm
module), then every rendered object is validated: built-in kinds against Kubernetes' OpenAPI
schemas (kubernetes-validate, strict: unknown fields fail), custom resources against the CRDs
they instantiate (CloudNativePG, Prometheus Operator, cert-manager, fetched from their Go modules
by scripts/fetch-crds; unknown fields fail here too). Every PromQL expression of the alert rules
and the dashboard must parse (promql-parser). values.schema.json must reject an unknown key and a
wrong type. With a kube-apiserver at hand (scripts/build-kube), every object also goes through a
server-side dry run with strict field validation (which also runs the CRDs' CEL rules). The
daemon configuration rendered into the ConfigMap goes through
`continuum check-config` when a built binary is at hand.

Usage: check_charts.py --helm HELM --crds DIR [--continuum BIN] [--kube-bin DIR]
"""

import argparse
import asyncio
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import kubernetes_validate
import promql_parser
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "charts"
VALUES = CHARTS / "check" / "values"
NAMESPACE = "chart-check"
# Each chart's value sets: (label, values file or None for the defaults).
VALUE_SETS = {
    "continuum": [("defaults", None), ("all toggles", "continuum-all.yaml"), ("witness", "continuum-witness.yaml")],
    "cnpg-pair": [("defaults", None), ("all toggles", "cnpg-pair-all.yaml")],
    "pdm": [("defaults", None), ("all toggles", "pdm-all.yaml")],
}
# Values that values.schema.json must refuse: (what, --set flags).
NEGATIVE = {
    "continuum": [
        ("unknown top-level key", ["--set", "replicas=2"]),
        ("unknown nested key (typo)", ["--set", "metrics.serviceMonitor.enabeld=true"]),
        ("wrong type", ["--set-string", "raft.port=seventy-one-hundred"]),
        ("bad enum", ["--set", "role=observer"]),
    ],
    "cnpg-pair": [
        ("unknown top-level key", ["--set", "replicas=2"]),
        ("wrong type", ["--set-string", "instances=three"]),
        ("preferred durability with standbyNamesPre", ["--set", "synchronous.dataDurability=preferred"]),
    ],
    "pdm": [
        ("unknown top-level key", ["--set", "tokenFile=/x"]),
        ("wrong type", ["--set-string", "port=http"]),
        ("host name as dns_addr", ["--set", "powerdns.dnsAddr=powerdns:53"]),
    ],
}
K8S_VERSION = "1.34"


class Failures:
    def __init__(self):
        self.items = []
        self.passed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
        else:
            self.items.append(f"{what}: {detail}".rstrip(": "))
            print(f"  FAIL {what}: {detail}", flush=True)
        return ok


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


# ---- custom resource schemas --------------------------------------------------------------


def strict_schema(schema):
    """A CRD's structural schema as JSON Schema that refuses unknown fields (as the API server's
    strict field validation does) and knows `nullable`."""
    s = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for key in ("properties", "patternProperties"):
            for child in node.get(key, {}).values():
                walk(child)
        for key in ("items", "additionalProperties", "not"):
            walk(node.get(key))
        for key in ("allOf", "anyOf", "oneOf"):
            for child in node.get(key, []):
                walk(child)

    walk(s)
    # metadata is checked by the API server, not the CRD schema.
    s.setdefault("properties", {})["metadata"] = {"type": "object"}
    s["properties"].setdefault("apiVersion", {"type": "string"})
    s["properties"].setdefault("kind", {"type": "string"})
    return s


def load_crds(paths):
    schemas = {}
    for path in paths:
        for doc in yaml.safe_load_all(Path(path).read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                schema = version.get("schema", {}).get("openAPIV3Schema")
                if schema:
                    schemas[(f"{group}/{version['name']}", kind)] = strict_schema(schema)
    return schemas


# ---- PromQL -------------------------------------------------------------------------------

GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "$pair": ".*"}


def promql_errors(expr):
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    try:
        promql_parser.parse(expr)
        return None
    except Exception as e:  # the parser raises ValueError subclasses with the position
        return str(e)


def expressions(docs):
    """(origin, expr) of every alert rule and dashboard panel target."""
    for doc in docs:
        if doc.get("kind") == "PrometheusRule":
            for group in doc["spec"]["groups"]:
                for rule in group["rules"]:
                    yield f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]
        if doc.get("kind") == "ConfigMap":
            for name, text in (doc.get("data") or {}).items():
                if not name.endswith(".json"):
                    continue
                dashboard = json.loads(text)
                for panel in dashboard.get("panels", []):
                    for target in panel.get("targets", []):
                        yield f"panel {panel['title']!r}", target["expr"]


# ---- the checks ---------------------------------------------------------------------------


def sdk_lint(chart):
    """Helm's own lint through helm-sdkpy (the Helm library, no values overrides)."""
    import helm_sdkpy

    result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration(namespace=NAMESPACE)).run(str(chart)))
    # Severity 1 info, 2 warning, 3 error; the Go errors themselves do not survive the JSON, so
    # the CLI's lint below gives the messages.
    messages = result.get("Messages") or []
    errors = [m for m in messages if m.get("Severity", 0) >= 2]
    return errors, result


def check_chart(name, args, crd_schemas, failures, server=None):
    chart = CHARTS / name
    print(f"== {name}", flush=True)
    try:
        errors, _ = sdk_lint(chart)
        failures.check(not errors, f"{name}: helm-sdkpy lint", "warnings/errors in " + ", ".join(m.get("Path", "?") for m in errors))
    except Exception as e:
        failures.check(False, f"{name}: helm-sdkpy lint", repr(e)[:2000])
    for label, values in VALUE_SETS[name]:
        vflags = ["-f", str(VALUES / values)] if values else []
        what = f"{name} [{label}]"
        lint = run([args.helm, "lint", "--strict", str(chart), "--namespace", NAMESPACE, *vflags])
        failures.check(lint.returncode == 0, f"{what}: helm lint --strict", (lint.stdout + lint.stderr)[-3000:])
        out = run([args.helm, "template", "rel", str(chart), "--namespace", NAMESPACE, "--include-crds", *vflags])
        if not failures.check(out.returncode == 0, f"{what}: helm template", out.stderr[-3000:]):
            continue
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        kinds = {}
        for doc in docs:
            kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
            ident = f"{what}: {doc['kind']}/{doc['metadata']['name']}"
            ns = doc["metadata"].get("namespace")
            failures.check(ns in (None, NAMESPACE), f"{ident} namespace", f"hard-coded {ns}")
            key = (doc["apiVersion"], doc["kind"])
            if key in crd_schemas:
                try:
                    jsonschema.Draft7Validator(crd_schemas[key]).validate(doc)
                    failures.check(True, ident)
                except jsonschema.ValidationError as e:
                    failures.check(False, f"{ident} (CRD schema)", f"{e.message} at {'/'.join(map(str, e.absolute_path))}")
            else:
                try:
                    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
                    failures.check(True, ident)
                except kubernetes_validate.utils.SchemaNotFoundError as e:
                    failures.check(False, f"{ident} (no schema)", e.message)
                except kubernetes_validate.utils.ValidationError as e:
                    failures.check(False, f"{ident} (Kubernetes schema)", f"{e.message} at {'/'.join(map(str, e.absolute_path))}")
        if server:
            for doc in docs:
                if doc["kind"] != "CustomResourceDefinition":
                    err = server.dry_run(doc, NAMESPACE)
                    failures.check(err is None, f"{what}: {doc['kind']}/{doc['metadata']['name']} server-side dry run", err)
        exprs = list(expressions(docs))
        for origin, expr in exprs:
            err = promql_errors(expr)
            failures.check(err is None, f"{what}: PromQL of {origin}", f"{err}: {expr}")
        summary = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        print(f"  {label}: {len(docs)} objects ({summary}); {len(exprs)} PromQL expressions", flush=True)
        if name == "continuum" and args.continuum:
            check_config(what, docs, args.continuum, failures, expect_valid=label != "defaults")
    for what, flags in NEGATIVE[name]:
        out = run([args.helm, "template", "rel", str(chart), "--namespace", NAMESPACE, *flags])
        failures.check(
            out.returncode != 0 and "schema" in out.stderr.lower(),
            f"{name}: values.schema.json rejects {what}",
            f"rendered anyway (exit {out.returncode}): {out.stderr[-500:]}",
        )


def check_config(what, docs, binary, failures, expect_valid):
    """The ConfigMap's TOML through the daemon's own validation (defaults have no pair: refused)."""
    for doc in docs:
        if doc["kind"] == "ConfigMap" and "continuum.toml" in (doc.get("data") or {}):
            with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
                f.write(doc["data"]["continuum.toml"])
                f.flush()
                out = run([binary, "check-config", "--config", f.name])
            if expect_valid:
                failures.check(out.returncode == 0, f"{what}: continuum check-config", out.stdout + out.stderr)
            else:
                failures.check(
                    out.returncode == 64 and "pair" in (out.stdout + out.stderr),
                    f"{what}: continuum check-config refuses a data daemon without pairs",
                    f"exit {out.returncode}: {out.stdout + out.stderr}",
                )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--helm", required=True)
    parser.add_argument("--crds", required=True, help="directory of upstream CRD YAML files")
    parser.add_argument("--continuum", help="continuum binary for check-config (optional)")
    parser.add_argument("--kube-bin", help="directory with kube-apiserver and etcd: server-side dry runs (optional)")
    args = parser.parse_args()
    started = time.monotonic()
    crd_files = sorted(Path(args.crds).glob("*.yaml")) + sorted((CHARTS / "continuum" / "crds").glob("*.yaml"))
    crd_schemas = load_crds(crd_files)
    for needed in [
        ("postgresql.cnpg.io/v1", "Cluster"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("cert-manager.io/v1", "Certificate"),
    ]:
        if needed not in crd_schemas:
            sys.exit(f"check-charts: no CRD schema for {needed} in {args.crds} (run scripts/fetch-crds)")
    failures = Failures()
    if args.kube_bin:
        from apiserver import ApiServer

        crd_docs = [
            doc
            for path in crd_files
            for doc in yaml.safe_load_all(Path(path).read_text())
            if doc and doc.get("kind") == "CustomResourceDefinition"
        ]
        t = time.monotonic()
        with ApiServer(args.kube_bin) as server:
            server.install_crds(crd_docs)
            server.ensure_namespace(NAMESPACE)
            print(f"kube-apiserver up with {len(crd_docs)} CRDs in {time.monotonic() - t:.1f} s", flush=True)
            for name in VALUE_SETS:
                check_chart(name, args, crd_schemas, failures, server)
    else:
        for name in VALUE_SETS:
            check_chart(name, args, crd_schemas, failures)
    took = time.monotonic() - started
    if failures.items:
        print(f"check-charts: FAILED checks ({took:.1f} s):")
        for item in failures.items:
            print(f"  - {item[:300]}")
        print(f"check-charts: {failures.passed} passed, {len(failures.items)} failed")
        sys.exit(1)
    print(f"check-charts: all checks passed in {took:.1f} s")
    print(f"check-charts: {failures.passed} passed, 0 failed")


if __name__ == "__main__":
    main()
