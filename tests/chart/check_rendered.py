#!/usr/bin/env python3
"""Checks of a rendered Switchyard chart that `helm lint` and the schemas cannot make.

Usage: check_rendered.py RENDERED.yaml --kube-version 1.32.0 --kubernetes-validate PATH
                         [--switchyard BIN]

1. kubernetes-validate --strict on every manifest the API server knows; a ServiceMonitor or a
   PrometheusRule is checked against tests/chart/{servicemonitor,prometheusrule}.schema.json
   instead (kubernetes-validate bundles no CRD schemas), and any other kind without a schema is
   an error. Every metric an alert uses must be one docs/operations.md lists.
2. Cross-references: selectors match pod labels, Service/probe/Ingress ports exist, volumes
   exist, the HPA and the StatefulSet's Service exist, the router's instance variables.
3. Policies of the chart: non-root, read-only root filesystem, no capabilities, grace period
   above the drain, no Secret value in the ConfigMap or in a plain env value.
4. With --switchyard: `switchyard check-config` on the rendered TOML, once for the gateway and
   once per router ordinal, with the environment each pod would get and the Secret's files
   written to a temporary directory.

Exits 1 with one line per problem.
"""

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import tomllib

import jsonschema
import yaml

HERE = pathlib.Path(__file__).resolve().parent
SECRET_DIR = "/etc/switchyard/secrets"
CONFIG_DIR = "/etc/switchyard/config"
# Stand-ins for values of a Secret the chart does not create (an existing Secret).
DUMMY_ENV = {
    "SWITCHYARD__BUS__URL": "amqp://switchyard:dummy-password@rabbitmq:5672/%2f",
    "SWITCHYARD__STORE__URL": "redis://:dummy-password@redis:6379/0",
}
DUMMY_SECRET = "dummy-secret-value-0123456789abcdef"
SECRET_OPTIONS = {
    "secret", "app_secret", "token", "encoding_aes_key", "client_secret", "corp_secret",
    "webhook_secret", "access_token", "refresh_token",
}

problems = []


def problem(msg):
    problems.append(msg)


def name_of(doc):
    return f"{doc['kind']}/{doc['metadata']['name']}"


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def pod_templates(docs):
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


CRD_SCHEMAS = {"ServiceMonitor": "servicemonitor.schema.json", "PrometheusRule": "prometheusrule.schema.json"}


def documented_metrics():
    """The metric names of the table in docs/operations.md."""
    text = (HERE.parent.parent / "docs" / "operations.md").read_text()
    return set(re.findall(r"^\| `(switchyard_[a-z0-9_]+)`", text, re.M))


def check_alerts(rule):
    documented = documented_metrics()
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            for metric in re.findall(r"switchyard_[a-z0-9_]+", r["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                if metric not in documented and base not in documented:
                    problem(f"{name_of(rule)}: alert {r['alert']} uses {metric}, which docs/operations.md does not list")


def validate_kubernetes(docs, kube_version, kv):
    builtin, crds = [], []
    for d in docs:
        (crds if d["kind"] in CRD_SCHEMAS else builtin).append(d)
    for d in crds:
        schema = json.loads((HERE / CRD_SCHEMAS[d["kind"]]).read_text())
        if d["kind"] == "PrometheusRule":
            check_alerts(d)
        for err in jsonschema.Draft7Validator(schema).iter_errors(d):
            path = ".".join(str(p) for p in err.absolute_path)
            problem(f"{name_of(d)}: {path}: {err.message}")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(builtin, f, sort_keys=False)
        path = f.name
    try:
        res = subprocess.run(
            [kv, "--kubernetes-version", kube_version, "--strict", "--quiet", path],
            capture_output=True, text=True,
        )
    finally:
        os.unlink(path)
    out = (res.stdout + res.stderr).strip()
    if out:
        print(out)
    if res.returncode != 0:
        problem(f"kubernetes-validate --strict failed (exit {res.returncode})")
    if "Couldn't find schema" in out:
        problem("kubernetes-validate has no schema for a rendered kind (see above)")
    print(f"kubernetes-validate {kube_version} --strict: {len(builtin)} manifest(s); "
          f"ServiceMonitor and PrometheusRule subset schemas: {len(crds)}")


def check_references(docs):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    workloads = pod_templates(docs)
    services = by_kind.get("Service", {})

    def pods_of(selector):
        return [w for w in workloads
                if matches(selector, w["spec"]["template"]["metadata"].get("labels", {}))]

    def port_names(workload):
        return {p.get("name") for c in workload["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])}

    for w in workloads:
        spec = w["spec"]
        labels = spec["template"]["metadata"].get("labels", {})
        if not matches(spec["selector"].get("matchLabels"), labels):
            problem(f"{name_of(w)}: selector does not match the pod template's labels")
        pod = spec["template"]["spec"]
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            ports = {p.get("name") for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problem(f"{name_of(w)}: {probe} uses port {port!r}, not a container port")
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    problem(f"{name_of(w)}: volumeMount {m['name']!r} has no volume")
        for v in pod.get("volumes", []):
            if v["name"] == "config" and v["configMap"]["name"] not in by_kind.get("ConfigMap", {}):
                problem(f"{name_of(w)}: ConfigMap {v['configMap']['name']!r} is not rendered")
        if w["kind"] == "StatefulSet":
            svc = services.get(spec.get("serviceName"))
            if svc is None or svc["spec"].get("clusterIP") != "None":
                problem(f"{name_of(w)}: serviceName {spec.get('serviceName')!r} is not a rendered headless Service")
    for svc in services.values():
        backing = pods_of(svc["spec"].get("selector"))
        if not backing:
            problem(f"{name_of(svc)}: selector matches no pod template")
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort")
            if isinstance(tp, str) and any(tp not in port_names(w) for w in backing):
                problem(f"{name_of(svc)}: targetPort {tp!r} is not a port of its pods")
    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        if not pods_of(pdb["spec"]["selector"].get("matchLabels")):
            problem(f"{name_of(pdb)}: selector matches no pod template")
    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        ref = hpa["spec"]["scaleTargetRef"]
        target = by_kind.get(ref["kind"], {}).get(ref["name"])
        if target is None:
            problem(f"{name_of(hpa)}: scaleTargetRef {ref['kind']}/{ref['name']} is not rendered")
        elif "replicas" in target["spec"]:
            problem(f"{name_of(hpa)}: its target also sets spec.replicas (they would fight)")
    for ing in by_kind.get("Ingress", {}).values():
        for rule in ing["spec"].get("rules", []):
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                svc = services.get(backend["name"])
                if svc is None:
                    problem(f"{name_of(ing)}: backend Service {backend['name']!r} is not rendered")
                elif backend["port"].get("name") not in {p.get("name") for p in svc["spec"]["ports"]}:
                    problem(f"{name_of(ing)}: backend port {backend['port']} is not a port of {name_of(svc)}")
    for sm in by_kind.get("ServiceMonitor", {}).values():
        sel = sm["spec"]["selector"]
        picked = [s for s in services.values() if matches(sel.get("matchLabels"), s["metadata"].get("labels", {}))]
        components = {s["metadata"]["labels"].get("app.kubernetes.io/component") for s in picked}
        if not {"gateway", "router"} <= components:
            problem(f"{name_of(sm)}: selects Services of {sorted(c for c in components if c)}, not both gateway and router")
        for ep in sm["spec"]["endpoints"]:
            for s in picked:
                if ep.get("port") not in {p.get("name") for p in s["spec"]["ports"]}:
                    problem(f"{name_of(sm)}: port {ep.get('port')!r} is not a port of {name_of(s)}")


def rendered_config(docs):
    cms = [d for d in docs if d["kind"] == "ConfigMap" and "switchyard.toml" in d.get("data", {})]
    if len(cms) != 1:
        problem(f"expected one ConfigMap with switchyard.toml, found {len(cms)}")
        return None, None
    text = cms[0]["data"]["switchyard.toml"]
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem(f"{name_of(cms[0])}: switchyard.toml is not valid TOML: {e}")
        return text, None


def secret_data(docs):
    data = {}
    for s in (d for d in docs if d["kind"] == "Secret"):
        data[s["metadata"]["name"]] = {k: str(v) for k, v in (s.get("stringData") or {}).items()}
    return data


def check_policies(docs, toml_text, config, secrets):
    if config is not None:
        # check-config does not know the role; gateways and routers refuse anything else.
        if config.get("bus", {}).get("kind") != "amqp" or config.get("store", {}).get("kind") != "redis":
            problem("switchyard.toml: gateways and routers need bus.kind = \"amqp\" and store.kind = \"redis\"")
        for section in ("bus", "store"):
            if "url" in config.get(section, {}):
                problem(f"switchyard.toml: {section}.url is in the ConfigMap; it must come from the Secret")
        for ch in config.get("channels", []):
            for key in ch:
                if key in SECRET_OPTIONS:
                    problem(f"switchyard.toml: channels.{ch.get('id')}.{key} is inline in the ConfigMap")
        if not config.get("auth", {}).get("api_keys"):
            problem("switchyard.toml: no [[auth.api_keys]] while listening beyond loopback")
    values = {v for s in secrets.values() for v in s.values() if len(v) >= 4}
    for v in values:
        if toml_text and v in toml_text:
            problem("a Secret value appears in the ConfigMap")
    grace = int((config or {}).get("server", {}).get("shutdown_grace_secs", 20))
    for w in pod_templates(docs):
        pod = w["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                problem(f"{name_of(w)}: container {c['name']} may run as root")
            if not sc.get("readOnlyRootFilesystem"):
                problem(f"{name_of(w)}: container {c['name']} has a writable root filesystem")
            if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
                problem(f"{name_of(w)}: container {c['name']} does not drop ALL capabilities")
            if sc.get("allowPrivilegeEscalation") is not False:
                problem(f"{name_of(w)}: container {c['name']} allows privilege escalation")
            for e in c.get("env", []):
                if "value" in e and str(e["value"]) in values:
                    problem(f"{name_of(w)}: env {e['name']} holds a Secret value in plain text")
            pre = ((c.get("lifecycle") or {}).get("preStop") or {})
            sleep = int((pre.get("sleep") or {}).get("seconds", 0))
            cmd = (pre.get("exec") or {}).get("command") or []
            if cmd[:1] == ["sleep"]:
                sleep = int(cmd[1])
            tgps = pod.get("terminationGracePeriodSeconds", 30)
            if tgps <= grace + sleep:
                problem(f"{name_of(w)}: terminationGracePeriodSeconds {tgps} <= preStop sleep {sleep} + shutdown_grace_secs {grace}")
            args = c.get("args", [])
            if "--config" not in args or not args[args.index("--config") + 1].startswith(CONFIG_DIR + "/"):
                problem(f"{name_of(w)}: container {c['name']} is not started with --config {CONFIG_DIR}/…")
        if w["kind"] == "StatefulSet":
            env = {e["name"]: e for c in pod["containers"] for e in c.get("env", [])}
            inst = env.get("SWITCHYARD__ROUTER__INSTANCE", {})
            if (inst.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") != "metadata.labels['apps.kubernetes.io/pod-index']":
                problem(f"{name_of(w)}: SWITCHYARD__ROUTER__INSTANCE does not come from the pod-index label")
            if str(env.get("SWITCHYARD__ROUTER__INSTANCES", {}).get("value")) != str(w["spec"]["replicas"]):
                problem(f"{name_of(w)}: SWITCHYARD__ROUTER__INSTANCES differs from spec.replicas")
            if w["spec"].get("podManagementPolicy") != "Parallel":
                problem(f"{name_of(w)}: routers must start together (podManagementPolicy: Parallel)")


def run_check_config(docs, toml_text, secrets, binary):
    workloads = pod_templates(docs)
    runs = 0
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        c = next(c for c in pod["containers"] if c["name"] == "switchyard")
        secret_name = next(v["secret"]["secretName"] for v in pod["volumes"] if v["name"] == "secrets")
        ordinals = range(w["spec"]["replicas"]) if w["kind"] == "StatefulSet" else [None]
        for ordinal in ordinals:
            with tempfile.TemporaryDirectory() as tmp:
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp}
                for e in c.get("env", []):
                    if "value" in e:
                        env[e["name"]] = str(e["value"])
                        continue
                    src = e["valueFrom"]
                    if "secretKeyRef" in src:
                        ref = src["secretKeyRef"]
                        env[e["name"]] = secrets.get(ref["name"], {}).get(ref["key"]) or DUMMY_ENV.get(e["name"], DUMMY_SECRET)
                    elif "fieldRef" in src:
                        path = src["fieldRef"]["fieldPath"]
                        env[e["name"]] = str(ordinal) if "pod-index" in path else "field"
                secret_dir = pathlib.Path(tmp, "secrets")
                secret_dir.mkdir()
                for key, value in secrets.get(secret_name, {}).items():
                    (secret_dir / key).write_text(value + "\n")
                config = tomllib.loads(toml_text)
                refs = [v for table in config.get("channels", []) + config.get("auth", {}).get("api_keys", [])
                        for k, v in table.items() if k.endswith("_file")]
                for ref in refs:
                    if ref.startswith(SECRET_DIR + "/"):
                        f = secret_dir / ref[len(SECRET_DIR) + 1:]
                        if not f.exists():  # an existing Secret: its contents are unknown here
                            f.write_text(DUMMY_SECRET + "\n")
                cfg = pathlib.Path(tmp, "switchyard.toml")
                cfg.write_text(toml_text.replace(SECRET_DIR + "/", str(secret_dir) + "/"))
                res = subprocess.run([binary, "check-config", str(cfg)], env=env,
                                     capture_output=True, text=True)
                who = name_of(w) + ("" if ordinal is None else f" pod {ordinal}")
                out = (res.stdout + res.stderr).strip().replace(str(cfg), "switchyard.toml")
                print(f"check-config as {who}: {out}")
                if res.returncode != 0:
                    problem(f"switchyard check-config refused the configuration of {who}")
                runs += 1
    if runs == 0:
        problem("no workload to run check-config for")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("--kube-version", required=True)
    ap.add_argument("--kubernetes-validate", required=True)
    ap.add_argument("--switchyard")
    args = ap.parse_args()
    with open(args.rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    validate_kubernetes(docs, args.kube_version, args.kubernetes_validate)
    check_references(docs)
    toml_text, config = rendered_config(docs)
    secrets = secret_data(docs)
    check_policies(docs, toml_text, config, secrets)
    if args.switchyard and toml_text is not None and config is not None:
        run_check_config(docs, toml_text, secrets, args.switchyard)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
