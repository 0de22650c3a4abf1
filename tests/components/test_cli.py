"""`python -m components <verb>`: one entry point for the Pulumi side's commands, an explicit registry."""

from __future__ import annotations

import importlib
import subprocess
import sys

from components.__main__ import VERBS
from tests.support.paths import REPO


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_every_verb_has_its_main():
    for verb, (module, _) in VERBS.items():
        assert callable(importlib.import_module(module).main), verb


def test_help_lists_the_verbs_and_an_unknown_verb_is_refused():
    listed = run("components", "--help")
    assert listed.returncode == 0 and all(verb in listed.stdout for verb in VERBS)
    unknown = run("components", "deploy")
    assert unknown.returncode == 2 and "unknown verb 'deploy'" in unknown.stderr


def test_check_and_its_short_form_agree():
    for command in (("components", "check"), ("components.config",)):
        done = run(*command, "stacks/Pulumi.dev.yaml")
        assert done.returncode == 0 and "stacks/Pulumi.dev.yaml: valid (2 hosts, stack `dev`)" in done.stdout


def test_the_stack_file_verbs_answer_help_and_a_missing_file_without_a_traceback():
    for verb in ("check", "kubernetes"):
        helped = run("components", verb, "--help")
        assert helped.returncode == 0 and "stacks/Pulumi.<stack>.yaml" in helped.stdout, helped.stderr
        missing = run("components", verb, "stacks/Pulumi.nope.yaml")
        assert missing.returncode == 1 and "Traceback" not in missing.stderr
        assert missing.stderr.startswith("stacks/Pulumi.nope.yaml: cannot read the stack file: "), missing.stderr
    bare = run("components")
    assert bare.returncode == 2 and "usage: python -m components VERB" in bare.stderr and not bare.stdout


def test_ssh_check_names_a_closed_port_at_once():
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXLqEeM0oWyVAeZNUo7cAvhyTrMwvucBKo1IuFNITMJ"
        t0 = time.monotonic()
        done = run("components", "ssh-check", "--address", "127.0.0.1", "--port", str(port), "--host-key", key,
                   "--key-path", "hosts[1].ssh.hostKey")  # fmt: skip
        took = time.monotonic() - t0
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(
        f"error: ssh-check: cannot reach 127.0.0.1:{port}: Connection refused; fix: check hosts[1].ssh.address "
        "and hosts[1].ssh.port"
    ), done.stderr
    assert took < 10, took  # one attempt, no retry loop
