"""`python -m components status`: what it concludes from the last update and each step's check
(components/render/status.py), and how it reads a host it cannot log in to."""

from __future__ import annotations

import json
import socket
from typing import Any

from components.render.status import (
    HostStatus,
    LastUpdate,
    StackStatus,
    StepState,
    StepStatus,
    last_update_of,
    render_table,
    step_status,
    to_json,
)

NO_STACK: Any = None  # read_host never reads the stack of a host it cannot log in to
OK = LastUpdate("update", "succeeded", "2026-12-07T10:00:00Z", "2026-12-07T10:01:00Z")
FAILED = LastUpdate("update", "failed", "2026-12-07T11:00:00Z", "2026-12-07T11:00:09Z")


def _facts(**extra: object) -> str:
    return json.dumps({"step": "kernel", "ok": True, "changed": False, **extra}) + "\n"


def test_a_step_in_sync_and_one_drifted() -> None:
    s = step_status("kernel", "h-kernel-cmdline", 0, _facts(in_sync=True, unmet=[], cmdline="x"), "")
    assert (s.state, s.problems, s.facts) == ("in_sync", (), {"cmdline": "x"})
    line = "the GRUB drop-in is missing; expected /etc/default/grub.d/90-tdxgpu.cfg, seen no file; fix: apply writes it"
    s = step_status("kernel", "h-kernel-cmdline", 0, _facts(in_sync=False, unmet=[line]), "")
    assert (s.state, s.problems) == ("drifted", (line,))


def test_a_refusing_step_keeps_its_error_without_the_step_prefix() -> None:
    err = "preflight: pre-production CPU (MSR 0xCE bit 27 set); expected production silicon, seen x; fix: use production CPUs"
    s = step_status("preflight", "h-preflight-check", 1, _facts(ok=False), f"noise\nerror: {err}\n")
    assert s.state == "refused"
    assert s.problems == (
        "pre-production CPU (MSR 0xCE bit 27 set); expected production silicon, seen x; fix: use production CPUs",
    )
    s = step_status("dcap", "h-dcap", 1, "", "error: dcap (check): QGS port; expected 4050, seen none; fix: f\n")
    assert s.problems == ("QGS port; expected 4050, seen none; fix: f",)


def test_a_check_that_ends_without_a_verdict_is_a_failure_not_in_sync() -> None:
    for rc, out, err in ((0, "", ""), (0, "not json\n", ""), (0, _facts(), ""), (127, "", "bash: x: not found\n")):
        s = step_status("kernel", "r", rc, out, err)
        assert s.state == "failed", (rc, out, err)
        assert s.problems[0].startswith(f"the check ended with status {rc} and no verdict")


def _host(*states: StepState) -> HostStatus:
    return HostStatus(
        "h", "10.0.0.2:22", None, tuple(StepStatus(f"s{i}", f"h-s{i}", st) for i, st in enumerate(states))
    )


def test_ready_needs_a_successful_last_up_and_every_step_in_sync() -> None:
    assert StackStatus("s", OK, True, (_host("in_sync", "in_sync"),)).exit_code == 0
    # The outputs are what Pulumi kept from the last success: they say nothing about now.
    failed = StackStatus("s", FAILED, True, (_host("in_sync", "refused"),))
    assert not failed.ready and failed.exit_code == 1
    assert any("still says true" in n for n in failed.notes())
    assert StackStatus("s", FAILED, True, (_host("in_sync"),)).exit_code == 1  # fixed by hand: up has not run
    assert StackStatus("s", None, None, (_host("in_sync"),)).exit_code == 1
    destroyed = StackStatus("s", LastUpdate("destroy", "succeeded", "t", "t"), None, ())
    assert destroyed.exit_code == 1 and "pulumi destroy" in destroyed.notes()[0]
    drift = StackStatus("s", OK, True, (_host("in_sync", "drifted"),))
    assert drift.exit_code == 3 and any("cannot see it" in n for n in drift.notes())
    refused_after_ok = StackStatus("s", OK, True, (_host("drifted", "refused"),))
    assert refused_after_ok.exit_code == 1
    down = StackStatus("s", OK, True, (HostStatus("h", "a:22", "cannot reach a:22"),))
    assert down.exit_code == 1 and down.hosts[0].first_problem == "ssh: cannot reach a:22"


def test_last_update_is_the_newest_up_or_destroy() -> None:
    history = [
        {"version": 3, "kind": "refresh", "result": "succeeded", "startTime": "t3"},
        {"version": 2, "kind": "update", "result": "failed", "startTime": "t2", "endTime": "e2"},
        {"version": 1, "kind": "update", "result": "succeeded", "startTime": "t1", "endTime": "e1"},
    ]
    assert last_update_of(history) == LastUpdate("update", "failed", "t2", "e2")
    assert last_update_of(list(reversed(history))) == LastUpdate("update", "failed", "t2", "e2")
    assert last_update_of([]) is None
    assert last_update_of([{"version": 1, "kind": "update", "startTime": "t"}]).result == "in-progress"  # type: ignore[union-attr]


def test_table_and_json_name_the_host_step_and_problem() -> None:
    steps = (
        StepStatus("host-tools", "h-tools-install", "in_sync"),
        StepStatus("preflight", "h-preflight-check", "refused", ("wrong OS; expected a, seen b; fix: c",)),
    )
    status = StackStatus("staging", FAILED, True, (HostStatus("gpu-a", "10.0.0.2:22", None, steps),))
    table = render_table(status)
    assert table.splitlines()[0] == "stack staging: NOT READY"
    assert "gpu-a  preflight   refused  wrong OS; expected a, seen b; fix: c" in table
    doc = to_json(status)
    assert (
        doc["ready"] is False
        and doc["hosts"]["gpu-a"]["firstProblem"] == "preflight: wrong OS; expected a, seen b; fix: c"
    )
    assert doc["lastUpdate"]["result"] == "failed"


def test_an_unreachable_host_is_named_with_the_fix() -> None:
    from components.config.model import HostConfig, Secret, SshConfig
    from components.status.command import read_host
    from tests.support.hosts.nshost import new_ssh_key

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    private, public = new_ssh_key()
    ssh = SshConfig(address="127.0.0.1", port=port, user="root", private_key=Secret(private), host_key=public)
    host = read_host(NO_STACK, HostConfig("gpu-a", ssh, None, None), 0)
    assert host.unreachable is not None and host.unreachable.startswith(f"cannot reach 127.0.0.1:{port}: ")
    assert host.unreachable.endswith("fix: check hosts[0].ssh.address and .port")
    bad = read_host(
        NO_STACK,
        HostConfig(
            "gpu-a",
            SshConfig(address="127.0.0.1", port=port, user="root", host_key=public, private_key=Secret("nope")),
            None,
            None,
        ),
        0,
    )
    assert bad.unreachable is not None and bad.unreachable.startswith("hosts[0].ssh.privateKey is not an unencrypted")
