"""Read what the Kubernetes target needs from the cluster itself, before any object is registered.

The program registers nothing in a cluster that cannot run a TDX pod: without the runtime class the
Deployment would be admitted and its pod would stay Pending (or, worse, start in a runtime that is
not a TD) until the rollout times out 45 minutes later. So the RuntimeClass is read first, with the
same kubeconfig and context the provider gets, through the official client (it speaks every
kubeconfig authentication: certificates, tokens, exec plugins).

Only reads; no stack config here (components/render/kubernetes.py turns the facts into errors
that name the config key).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REQUEST_TIMEOUT_S = 15.0


class ClusterReadError(Exception):
    """The cluster could not be read: the message says what was tried and the fix."""


@dataclass(frozen=True)
class Kubeconfig:
    """A kubeconfig file's text and what it selects: the provider receives `text` (as a secret)."""

    path: Path
    text: str
    context: str
    server: str


@dataclass(frozen=True)
class ClusterFacts:
    server: str
    context: str
    runtime_class: str | None  # the RuntimeClass asked for; None: the cluster has none of that name


def kubeconfig_path(configured: str | None) -> Path:
    """The file kubectl would read: the configured path, else the first of $KUBECONFIG, else
    ~/.kube/config."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get("KUBECONFIG", "")
    first = next((p for p in env.split(os.pathsep) if p), None)
    return Path(first).expanduser() if first else Path.home() / ".kube" / "config"


def load_kubeconfig(configured: str | None, context: str | None, key: str) -> Kubeconfig:
    """The kubeconfig file and the server its context points at; `key` is the config key that
    names the file (for the message)."""
    path = kubeconfig_path(configured)
    where = f"{key} ({path})" if configured else f"$KUBECONFIG or ~/.kube/config ({path})"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ClusterReadError(
            f"cannot read the kubeconfig {where}: {exc.strerror or exc}; fix: set {key} to a readable kubeconfig file"
        ) from None
    return parse_kubeconfig(path, text, context, where, key)


def parse_kubeconfig(path: Path, text: str, context: str | None, where: str, key: str) -> Kubeconfig:
    """The context (the given one, else current-context) and its cluster's server. Pure."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Only the position: PyYAML's message quotes the offending line, which may hold a credential.
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ClusterReadError(f"the kubeconfig {where} is not YAML{at}; fix: point {key} at a kubeconfig") from None
    if not isinstance(doc, dict):
        raise ClusterReadError(f"the kubeconfig {where} is not a kubeconfig mapping; fix: point {key} at a kubeconfig")
    name = context or doc.get("current-context")
    contexts = {c.get("name"): c.get("context") or {} for c in doc.get("contexts") or [] if isinstance(c, dict)}
    if not name or name not in contexts:
        listed = ", ".join(sorted(str(c) for c in contexts)) or "none"
        raise ClusterReadError(
            f"the kubeconfig {where} has no context `{name}` (contexts: {listed}); "
            f"fix: set the context key to one of them, or set current-context in the file"
        )
    clusters = {c.get("name"): c.get("cluster") or {} for c in doc.get("clusters") or [] if isinstance(c, dict)}
    cluster = clusters.get(contexts[name].get("cluster"))
    if not cluster or not cluster.get("server"):
        raise ClusterReadError(
            f"the kubeconfig {where}: context `{name}` names cluster `{contexts[name].get('cluster')}`, "
            f"which has no server; fix: repair the kubeconfig (kubectl config view)"
        )
    return Kubeconfig(path=path, text=text, context=str(name), server=str(cluster["server"]))


def api_client(kubeconfig: Kubeconfig) -> Any:
    """The official client's ApiClient for the kubeconfig's context (use it as a context manager)."""
    from kubernetes import config

    return config.new_client_from_config_dict(yaml.safe_load(kubeconfig.text), context=kubeconfig.context)


def read_cluster(kubeconfig: Kubeconfig, runtime_class: str) -> ClusterFacts:
    """The RuntimeClass `runtime_class` as the cluster has it (or None). Raises ClusterReadError
    when the API server cannot be reached or refuses the read."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    where = f"the API server {kubeconfig.server} (context `{kubeconfig.context}` of {kubeconfig.path})"
    try:
        api = api_client(kubeconfig)
    except Exception as exc:  # the client's own config errors have no common base class
        raise ClusterReadError(f"cannot use the kubeconfig {kubeconfig.path}: {exc}; fix: repair it") from None
    try:
        with api:
            rc = client.NodeV1Api(api).read_runtime_class(runtime_class, _request_timeout=REQUEST_TIMEOUT_S)
    except ApiException as exc:
        if exc.status == 404:
            return ClusterFacts(kubeconfig.server, kubeconfig.context, None)
        if exc.status in (401, 403):
            raise ClusterReadError(
                f"{where} refused to read RuntimeClass `{runtime_class}` ({exc.status} {exc.reason}); "
                "fix: give this kubeconfig's user `get` on runtimeclasses.node.k8s.io"
            ) from None
        raise ClusterReadError(f"{where} answered {exc.status} {exc.reason} to a RuntimeClass read") from None
    except (HTTPError, OSError) as exc:
        raise ClusterReadError(
            f"cannot reach {where}: {exc}; fix: check that the cluster is up and the kubeconfig points at it"
        ) from None
    return ClusterFacts(kubeconfig.server, kubeconfig.context, rc.metadata.name if rc.metadata else runtime_class)


# --------------------------------------------------------------------------------------------
# `python -m components kube-rollout`: wait until the Deployment runs the pod template this `up`
# applied, every replica Ready.
#
# pulumi-kubernetes' own Deployment await (v4.25.0, and its main branch as of 2026-08) takes the
# first watch event after an update at face value: right after the new spec is applied the status
# still describes the previous ReplicaSet (Available, NewReplicaSetAvailable), so `up` can finish
# while the new pod, i.e. the new TD, is not Ready. tests/e2e/test_kubernetes.py fails without this
# check (three runs of three). It reads the status the controller wrote for *this* generation of *this*
# template before it says done.

ROLLOUT_POLL_S = 2.0


def rollout_state(deployment: Mapping[str, Any], template_annotation: str, expected: str) -> tuple[bool, str]:
    """(done, what is seen) for a Deployment object as the API returns it (a dict). Pure."""
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    seen = ((spec.get("template") or {}).get("metadata") or {}).get("annotations", {}).get(template_annotation)
    if seen != expected:
        return False, f"its pod template is {seen!r}, not {expected!r} (another update?)"
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if observed is None or generation is None or observed < generation:
        return False, f"the controller has not seen generation {generation} yet (observed {observed})"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            raise ClusterReadError(f"the rollout failed: {cond.get('message')}")
    want = int(spec.get("replicas", 1))
    counts = {k: int(status.get(k) or 0) for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")}
    done = all(v == want for v in counts.values())
    return done, ", ".join(f"{k} {v}/{want}" for k, v in counts.items())


def wait_for_rollout(
    kubeconfig: Kubeconfig,
    namespace: str,
    name: str,
    template_annotation: str,
    expected: str,
    timeout_s: float,
    sleep: Any = None,
) -> dict[str, Any]:
    """Poll the Deployment until `rollout_state` says done (facts) or `timeout_s` passes (error)."""
    import time

    from kubernetes import client
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    sleep = sleep or time.sleep
    start = time.monotonic()
    seen = "not read yet"
    with api_client(kubeconfig) as api:
        apps = client.AppsV1Api(api)
        while True:
            try:
                obj = api.sanitize_for_serialization(
                    apps.read_namespaced_deployment(name, namespace, _request_timeout=REQUEST_TIMEOUT_S)
                )
                done, seen = rollout_state(obj, template_annotation, expected)
            except ApiException as exc:
                seen = f"the API server answered {exc.status} {exc.reason}"
            except (HTTPError, OSError) as exc:
                seen = f"the API server is unreachable ({exc})"
            else:
                if done:
                    status = obj.get("status") or {}
                    return {
                        "deployment": f"{namespace}/{name}",
                        "generation": obj["metadata"]["generation"],
                        "readyReplicas": status.get("readyReplicas"),
                        "seconds": round(time.monotonic() - start, 1),
                    }
            if time.monotonic() - start > timeout_s:
                raise ClusterReadError(
                    f"Deployment {namespace}/{name} did not finish its rollout in {timeout_s:.0f}s: {seen}; "
                    f"fix: `kubectl -n {namespace} describe pod -l app.kubernetes.io/instance={name}` shows why "
                    "(a pending pod: the node's TDX, GPU or runtime class; not Ready: the known-answer probe)"
                )
            sleep(ROLLOUT_POLL_S)


def main(argv: list[str]) -> int:
    """`kube-rollout --namespace NS --name NAME --annotation KEY --expect VALUE --timeout S
    [--context C]`, the kubeconfig's text on stdin (it holds credentials: never an argument)."""
    import argparse
    import json
    import sys

    p = argparse.ArgumentParser(prog="python -m components kube-rollout", description=main.__doc__)
    p.add_argument("--namespace", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--annotation", required=True, help="the pod template annotation that names this rollout")
    p.add_argument("--expect", required=True, help="its value in the template this `up` applied")
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("--context", default=None)
    args = p.parse_args(argv)
    try:
        kc = parse_kubeconfig(Path("<stdin>"), sys.stdin.read(), args.context, "on stdin", "kubernetes.kubeconfig")
        facts = wait_for_rollout(kc, args.namespace, args.name, args.annotation, args.expect, args.timeout)
    except ClusterReadError as exc:
        print(f"kube-rollout: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(facts))
    return 0
