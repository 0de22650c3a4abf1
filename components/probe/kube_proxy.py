"""`python -m components kube-proxy-pins`: one phase of a pin rollover of the verifying proxy in a
cluster (components/render/proxy_kubernetes.py has the whole picture).

The phase writes the TD's pins ConfigMap, and when that changed and the proxy's Deployment exists,
restarts its pods on it (a pod-template annotation with the data's digest, under this command's own
field manager) and waits for that rollout (the `kube-rollout` rule). On the first `up` the Deployment
does not exist yet: Pulumi creates it after the accept phase, on the ConfigMap as written.

stdin: `{"kubeconfig": TEXT, "pins": PINS DOCUMENT}`; stdout: one JSON line of facts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from components.probe.kube import (
    REQUEST_TIMEOUT_S,
    ClusterReadError,
    Kubeconfig,
    api_client,
    parse_kubeconfig,
    wait_for_rollout,
)

Phase = Literal["accept", "retire"]
PINS_KEY, RETIRING_KEY = "pins.json", "retiring.json"
PINS_ANNOTATION = "tdx-vllm.io/proxy-pins-sha256"
FIELD_MANAGER = "tdx-vllm-proxy-pins"


def pins_data(phase: Phase, deployed: Mapping[str, str] | None, new: str) -> dict[str, str]:
    """The ConfigMap's data after `phase`, given its data now (None: no ConfigMap yet). Pure.
    accept: the deployed pins, when they differ, retire; retire: only the new pins (a retiring set
    equal to the current one accepts nothing more)."""
    current = (deployed or {}).get(PINS_KEY)
    if phase == "accept" and current is not None and current != new:
        return {PINS_KEY: new, RETIRING_KEY: current}
    return {PINS_KEY: new, RETIRING_KEY: new}


def pins_digest(data: Mapping[str, str]) -> str:
    """The pod-template annotation of pods started on `data`. Pure."""
    return hashlib.sha256(json.dumps(dict(data), sort_keys=True).encode()).hexdigest()


def run_phase(
    kubeconfig: Kubeconfig, phase: Phase, namespace: str, configmap: str, deployment: str, new: str, timeout_s: float
) -> dict[str, Any]:
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    where = f"the API server {kubeconfig.server} (context `{kubeconfig.context}`)"
    try:
        with api_client(kubeconfig) as api:
            core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
            try:
                deployed = core.read_namespaced_config_map(
                    configmap, namespace, _request_timeout=REQUEST_TIMEOUT_S
                ).data
            except ApiException as exc:
                if exc.status != 404:
                    raise
                deployed = None
            data = pins_data(phase, deployed, new)
            changed = deployed != data
            if changed:
                body = {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": configmap,
                        "namespace": namespace,
                        "labels": {"app.kubernetes.io/part-of": "tdx-vllm"},
                    },
                    "data": data,
                }
                core.patch_namespaced_config_map(
                    configmap, namespace, body, field_manager=FIELD_MANAGER, force=True,
                    _content_type="application/apply-patch+yaml", _request_timeout=REQUEST_TIMEOUT_S,
                )  # fmt: skip
            rolled = False
            if changed:
                try:
                    apps.read_namespaced_deployment(deployment, namespace, _request_timeout=REQUEST_TIMEOUT_S)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                else:
                    digest = pins_digest(data)
                    patch = {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "metadata": {"name": deployment, "namespace": namespace},
                        "spec": {"template": {"metadata": {"annotations": {PINS_ANNOTATION: digest}}}},
                    }
                    apps.patch_namespaced_deployment(
                        deployment, namespace, patch, field_manager=FIELD_MANAGER, force=True,
                        _content_type="application/apply-patch+yaml", _request_timeout=REQUEST_TIMEOUT_S,
                    )  # fmt: skip
                    wait_for_rollout(kubeconfig, namespace, deployment, PINS_ANNOTATION, digest, timeout_s)
                    rolled = True
    except ApiException as exc:
        raise ClusterReadError(
            f"{where} answered {exc.status} {exc.reason} while the proxy's pins ({namespace}/{configmap}) were "
            "written; fix: give this kubeconfig's user get/patch on configmaps and deployments in that namespace"
        ) from None
    except (HTTPError, OSError) as exc:
        raise ClusterReadError(f"cannot reach {where}: {exc}; fix: check that the cluster is up") from None
    return {
        "phase": phase,
        "configMap": f"{namespace}/{configmap}",
        "retiring": data[RETIRING_KEY] != data[PINS_KEY],
        "changed": changed,
        "rolled": rolled,
        "ok": True,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m components kube-proxy-pins", description=__doc__)
    p.add_argument("--phase", choices=("accept", "retire"), required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--configmap", required=True)
    p.add_argument("--deployment", required=True)
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("--context", default=None)
    args = p.parse_args(argv)
    try:
        given = json.loads(sys.stdin.read())
        if (
            not isinstance(given, dict)
            or not isinstance(given.get("kubeconfig"), str)
            or not isinstance(given.get("pins"), str)
        ):
            raise ValueError("expected {kubeconfig, pins} strings")
    except ValueError as exc:
        print(f"kube-proxy-pins: stdin: {exc}", file=sys.stderr)
        return 2
    try:
        kc = parse_kubeconfig(
            Path("<stdin>"), given["kubeconfig"], args.context, "on stdin", "proxy.kubernetes.kubeconfig"
        )
        facts = run_phase(kc, args.phase, args.namespace, args.configmap, args.deployment, given["pins"], args.timeout)
    except ClusterReadError as exc:
        print(f"kube-proxy-pins: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(facts))
    return 0


# --------------------------------------------------------------------------------------------
# What `python -m components status` reads of a proxy in a cluster: its steady state is the retire
# phase's (the current pins only, the pods started on them, Ready).


def read_state(kubeconfig: Kubeconfig, namespace: str, configmap: str, deployment: str) -> dict[str, Any]:
    """The pins ConfigMap's data (None: absent), the proxy pods' pins annotation and readiness."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    where = f"the API server {kubeconfig.server} (context `{kubeconfig.context}`)"
    state: dict[str, Any] = {"data": None, "deployment": None}
    try:
        with api_client(kubeconfig) as api:
            core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
            try:
                cm = core.read_namespaced_config_map(configmap, namespace, _request_timeout=REQUEST_TIMEOUT_S)
                state["data"] = dict(cm.data or {})
            except ApiException as exc:
                if exc.status != 404:
                    raise
            try:
                state["deployment"] = api.sanitize_for_serialization(
                    apps.read_namespaced_deployment(deployment, namespace, _request_timeout=REQUEST_TIMEOUT_S)
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
    except ApiException as exc:
        raise ClusterReadError(f"{where} answered {exc.status} {exc.reason} to a read in {namespace}") from None
    except (HTTPError, OSError) as exc:
        raise ClusterReadError(f"cannot reach {where}: {exc}; fix: check that the cluster is up") from None
    return state


def _sha(text: str | None) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16] if text is not None else "none"


def state_problems(pins: str, state: Mapping[str, Any], where: str) -> list[str]:
    """Each way the proxy in `state` (read_state) differs from serving `pins` (the stack's pins
    document) only, as "what: expected X, seen Y; fix: Z". Pure."""
    fix = "fix: pulumi up (the accept and retire phases rewrite the pins and restart the proxy)"
    data, dep = state.get("data"), state.get("deployment")
    if data is None:
        return [f"{where}: expected the pins ConfigMap, seen none; {fix}"]
    problems = []
    if data.get(PINS_KEY) != pins:
        problems.append(
            f"{PINS_KEY}: expected the stack's pins (sha256 {_sha(pins)}), "
            f"seen sha256 {_sha(data.get(PINS_KEY))}; {fix}"
        )
    if data.get(RETIRING_KEY) != data.get(PINS_KEY):
        problems.append(
            f"{RETIRING_KEY}: expected nothing retiring (the current pins again), seen other pins (sha256 "
            f"{_sha(data.get(RETIRING_KEY))}): a rollover did not finish; {fix}"
        )
    if dep is None:
        return [*problems, f"{where}: expected the proxy's Deployment, seen none; {fix}"]
    annotations = ((dep.get("spec") or {}).get("template") or {}).get("metadata", {}).get("annotations") or {}
    started = annotations.get(PINS_ANNOTATION)
    # Absent: the pods were never restarted by a phase, so they run on the data of their creation.
    if started is not None and started != pins_digest(data):
        problems.append(
            f"pods: expected started on the ConfigMap's pins ({pins_digest(data)[:16]}), seen started on "
            f"{started[:16]}; {fix}"
        )
    want = int((dep.get("spec") or {}).get("replicas", 1))
    ready = int((dep.get("status") or {}).get("readyReplicas") or 0)
    if ready < want:
        problems.append(
            f"pods: expected {want} Ready, seen {ready}; fix: kubectl -n {where.split('/')[0]} describe pod "
            f"-l app.kubernetes.io/instance={where.split('/')[1]}"
        )
    return problems
