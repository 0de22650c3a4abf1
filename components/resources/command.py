"""Host steps as `pulumi_command.remote.Command`s: one step = one command whose stdin is the
rendered script (components/render/steps.py), and the reboot pattern (detached reboot, then a wait
command that dials until the host is back and checks the new boot).

A command runs only when its inputs change; the inputs are the script text and the desired
values, so a changed pin re-runs exactly the steps that use it, and a converged stack runs none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pulumi
from pulumi_command import local, remote

from components.config.model import SshConfig
from components.render.steps import DELETE_COMMAND, STEP_COMMAND, Step, render, render_stage

PER_DIAL_TIMEOUT_S = 15


@dataclass(frozen=True)
class Connection:
    """What every step needs to reach one host: SSH settings (key pinned), two dial policies, and
    the host's `scripts` step (`stage_scripts`), which every other step runs after."""

    ssh: SshConfig
    staged: remote.Command | None = None

    def with_staged(self, staged: remote.Command) -> Connection:
        return Connection(self.ssh, staged)

    def args(self, *, wait_for_boot: bool = False) -> remote.ConnectionArgsDict:
        return remote.ConnectionArgsDict(
            host=self.ssh.address,
            port=self.ssh.port,
            user=self.ssh.user,
            private_key=pulumi.Output.secret(self.ssh.private_key.value),
            host_key=self.ssh.host_key,
            # After a reboot the host refuses dials until sshd is back: keep dialing, bounded by
            # the command's custom timeout instead.
            dial_error_limit=-1 if wait_for_boot else 10,
            per_dial_timeout=PER_DIAL_TIMEOUT_S,
        )


def _stdin(step: Step, params: pulumi.Input[Mapping[str, pulumi.Input[str]]], action: str) -> pulumi.Output[str]:
    # from_input unwraps a mapping of Inputs and an Output of a whole mapping alike (secrets stay secret).
    resolved = cast(pulumi.Output[Mapping[str, str]], pulumi.Output.from_input(params))
    return resolved.apply(lambda p: render(step, p, action).stdin)


def facts_of(command: remote.Command | local.Command) -> pulumi.Output[dict[str, Any]]:
    """The JSON facts a step or project CLI printed (its last stdout line)."""

    def parse(stdout: str) -> dict[str, Any]:
        lines = [ln for ln in (stdout or "").splitlines() if ln.strip()]
        return json.loads(lines[-1]) if lines else {}

    # The provider may mark stdout secret because the connection (private key) is; the facts
    # are observations the scripts print deliberately and never contain a secret, and they must
    # stay readable as stack outputs. tests/ grep the outputs and state for every secret.
    return pulumi.Output.unsecret(command.stdout.apply(parse))


def host_step(
    name: str,
    step: Step,
    conn: Connection,
    params: pulumi.Input[Mapping[str, pulumi.Input[str]]],
    opts: pulumi.ResourceOptions,
    *,
    secret: bool = False,
    wait_for_boot: bool = False,
    timeout_s: int | None = None,
    action: str = "run",
    removable: bool = False,
) -> remote.Command:
    """One remote.Command running `step`. `secret`: params hold secrets: stdin is stored
    encrypted and the console shows none of the command's output. `removable`: `pulumi destroy`
    runs the step's `remove` (what its apply installed)."""
    stdin = _stdin(step, params, action)
    if conn.staged is not None:
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[conn.staged]))
    if secret:
        stdin = pulumi.Output.secret(stdin)
    if timeout_s:
        t = f"{timeout_s}s"
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create=t, update=t))
        )
    return remote.Command(
        name,
        connection=conn.args(wait_for_boot=wait_for_boot),
        create=STEP_COMMAND,
        delete=DELETE_COMMAND if removable else None,
        stdin=stdin,
        logging=remote.Logging.NONE if secret else remote.Logging.STDOUT_AND_STDERR,
        add_previous_output_in_env=False,
        opts=opts,
    )


def stage_scripts(name: str, conn: Connection, opts: pulumi.ResourceOptions) -> Connection:
    """The host's `scripts` step (components/render/steps.py `render_stage`: every host script under
    its sha256, staged once), and the connection whose steps run after it. `pulumi destroy` removes
    the files last, after every step that ran them."""
    rendered = render_stage()
    staged = remote.Command(
        name,
        connection=conn.args(),
        create=rendered.command,
        delete=DELETE_COMMAND,
        stdin=rendered.stdin,
        logging=remote.Logging.STDOUT_AND_STDERR,
        add_previous_output_in_env=False,
        opts=opts,
    )
    return conn.with_staged(staged)


@dataclass(frozen=True)
class RebootResult:
    reboot: remote.Command
    wait: remote.Command


def reboot_and_wait(
    name: str,
    step: Step,
    conn: Connection,
    params: Mapping[str, pulumi.Input[str]],
    after: Sequence[pulumi.Resource],
    parent: pulumi.Resource,
    timeout_s: int,
) -> RebootResult:
    """Reboot when the running system lacks `step`'s effect, then wait for the new boot.

    The reboot command schedules `systemctl reboot` a few seconds out and stops the SSH listener,
    so the wait command cannot reach the old boot; the wait command dials without limit (bounded by
    `timeout_s`), checks the boot id changed, then polls the step's runtime check.
    """
    # A re-run after an interrupted `up` may find the host still rebooting: dial like the wait does.
    reboot = host_step(
        f"{name}-reboot",
        step,
        conn,
        params,
        action="reboot",
        wait_for_boot=True,
        timeout_s=timeout_s,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=list(after)),
    )
    facts = facts_of(reboot)
    wait_params = dict(params)
    wait_params["TDX_PREV_BOOT_ID"] = facts.apply(lambda f: str(f.get("boot_id", "")))
    wait_params["TDX_REBOOTING"] = facts.apply(lambda f: "true" if f.get("rebooting") else "false")
    wait_params["TDX_WAIT_TIMEOUT"] = str(timeout_s)
    wait = host_step(
        f"{name}-wait",
        step,
        conn,
        wait_params,
        action="wait",
        wait_for_boot=True,
        timeout_s=timeout_s,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[reboot]),
    )
    return RebootResult(reboot=reboot, wait=wait)
