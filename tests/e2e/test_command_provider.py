"""End to end: the stand-in command provider (tools/command-provider) under the real Pulumi CLI
(bin/pulumi), file backend, against an OpenSSH server started on 127.0.0.1.

One inline Pulumi project; the tests of the main stack run in file order and build on each
other (create -> no-op -> update -> replace -> failures -> secrets -> destroy). The reboot
pattern (dial without limit until sshd comes up, bounded by the custom timeout) has its own stack.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import REPO

PULUMI = REPO / "bin" / "pulumi"
LAUNCHER = REPO / "tools" / "command-provider" / "pulumi-resource-command"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen")

if not PULUMI.exists():
    pytest.skip(f"{PULUMI} is missing: build the toolchain with tools/build-pulumi.sh", allow_module_level=True)
if not os.access(SSHD, os.X_OK) or not SSH_KEYGEN:
    pytest.skip("OpenSSH server/ssh-keygen not installed (Debian: openssh-server)", allow_module_level=True)

TOKEN = "tok-3b1f0c5e9a7d4c21"  # a secret environment value of the local command
STDIN_SECRET = "stdin-8e2d46a1f0b37c59"  # a secret stdin of the remote command
PROJECT = "cmdprov-e2e"

PROGRAM = r"""
import pulumi
from pulumi_command import local, remote

cfg = pulumi.Config()
marks = cfg.require("marks")


def connection(port_key):
    return remote.ConnectionArgsDict(
        host="127.0.0.1", port=int(cfg.require(port_key)), user=cfg.require("user"),
        private_key=cfg.require_secret("privateKey"), host_key=cfg.require("hostKey"),
        dial_error_limit=int(cfg.get("dialErrorLimit") or 10), per_dial_timeout=5)


if cfg.get("mode") == "wait":
    t = cfg.require("timeout")
    wait = remote.Command("wait", connection=connection("waitPort"), create="echo up",
                          opts=pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create=t, update=t)))
    pulumi.export("wait", wait.stdout)
else:
    loc = local.Command(
        "loc",
        create=cfg.get("localCreate") or 'printf "local:%s" "$(printf %s "$TOKEN" | sha256sum | cut -c1-16)"',
        update='echo "updated-by-update prev=$PULUMI_COMMAND_STDOUT"',
        delete=f'echo "local-delete prev=$PULUMI_COMMAND_STDOUT" >> {marks}/local.log',
        environment={"TOKEN": cfg.require_secret("token")},
        triggers=[cfg.get("trigger") or "t1"])
    version = cfg.get("remoteVersion") or "v1"
    create = (f'read -r line; echo "{version} stdin:$(printf %s "$line" | sha256sum | cut -c1-16) '
              f'env:$TESTVAR_A prev:${{PULUMI_COMMAND_STDOUT:+set}}"; echo {version} >> {marks}/remote-runs; '
              'echo to-stderr >&2')
    if cfg.get_bool("remoteFail"):
        create = "echo out-marker; echo err-marker >&2; exit 7"
    # A child resource: its URN type is "e2e:test:Group$command:remote:Command".
    group = pulumi.ComponentResource("e2e:test:Group", "group")
    rem = remote.Command(
        "rem", connection=connection("port"), create=create, opts=pulumi.ResourceOptions(parent=group),
        delete=f'echo "remote-delete prev=$PULUMI_COMMAND_STDOUT" >> {marks}/remote.log',
        stdin=cfg.require_secret("stdinSecret").apply(lambda s: s + "\n"),
        environment={"TESTVAR_A": "from-env"},
        logging=remote.Logging.STDOUT_AND_STDERR)
    pulumi.export("loc", loc.stdout)
    pulumi.export("rem", rem.stdout)
    pulumi.export("remStderr", rem.stderr)
"""


def _h(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:16]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> tuple[str, str]:
    assert SSH_KEYGEN is not None  # the module is skipped without it
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path.read_text(), path.with_suffix(".pub").read_text().strip()


class Sshd:
    """`sshd -D` on 127.0.0.1:port with its own host key and authorized_keys."""

    def __init__(self, d: Path, port: int, host_key: Path, authorized_keys: Path):
        self.port, self.dir = port, d
        d.mkdir(parents=True, exist_ok=True)
        cfg = d / "sshd_config"
        cfg.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {d}/sshd.pid\n"
            f"AuthorizedKeysFile {authorized_keys}\nStrictModes no\nUsePAM no\nUseDNS no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "AcceptEnv TESTVAR_* PULUMI_COMMAND_*\nMaxStartups 100\nLogLevel ERROR\n"
        )
        self.log = open(d / "sshd.log", "wb")
        self.proc: subprocess.Popen | None = None
        self.cfg = cfg

    def start(self) -> Sshd:
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.cfg)], stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start: {(self.dir / 'sshd.log').read_text()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Env:
    """The project dir, backend, keys and one sshd; runs the CLI."""

    def __init__(self, root: Path):
        self.root = root
        self.project = root / "project"
        self.backend = root / "backend"
        self.marks = root / "marks"
        for d in (self.project, self.backend, self.marks, root / "home", root / "plugins"):
            d.mkdir(parents=True)
        (self.project / "Pulumi.yaml").write_text(f"name: {PROJECT}\nruntime: python\n")
        (self.project / "__main__.py").write_text(PROGRAM)
        # The provider under test, first on PATH (also when bin/ holds an official one).
        (root / "plugins" / "pulumi-resource-command").symlink_to(LAUNCHER)
        keys = root / "keys"
        keys.mkdir()
        _, self.host_key = _keygen(keys / "host")
        self.client_key, client_pub = _keygen(keys / "client")
        _, self.other_host_key = _keygen(keys / "other")
        (keys / "authorized_keys").write_text(client_pub + "\n")
        self.keys = keys
        self.sshd = Sshd(root / "sshd", _free_port(), keys / "host", keys / "authorized_keys").start()
        python = VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable)
        self.env = {
            **os.environ,
            "PATH": os.pathsep.join(
                [str(root / "plugins"), str(python.parent), str(REPO / "bin"), os.environ.get("PATH", "")]
            ),
            "PULUMI_HOME": str(root / "home"),
            "PULUMI_BACKEND_URL": f"file://{self.backend}",
            "PULUMI_CONFIG_PASSPHRASE": "e2e-passphrase",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_PYTHON_CMD": str(python),
            "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
        }
        self.env.pop("PULUMI_ACCESS_TOKEN", None)
        self.timings: list[tuple[str, float]] = []

    def pulumi(
        self, *args: str, stack: str = "dev", ok: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        cmd = [str(PULUMI), *args, "--stack", stack, "--non-interactive", "--color", "never"]
        t = time.monotonic()
        p = subprocess.run(
            cmd,
            cwd=self.project,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        self.timings.append((" ".join(args[:1]), time.monotonic() - t))
        if ok and p.returncode != 0:
            raise AssertionError(f"pulumi {' '.join(args)} failed ({p.returncode}):\n{p.stdout}")
        if not ok and p.returncode == 0:
            raise AssertionError(f"pulumi {' '.join(args)} unexpectedly succeeded:\n{p.stdout}")
        return p

    def up(self, stack: str = "dev", ok: bool = True) -> subprocess.CompletedProcess:
        return self.pulumi("up", "--yes", "--skip-preview", stack=stack, ok=ok)

    def config(self, stack: str = "dev", secret: dict[str, str] | None = None, **plain: str) -> None:
        args = ["config", "set-all"]
        for k, v in plain.items():
            args += ["--plaintext", f"{k}={v}"]
        for k, v in (secret or {}).items():
            args += ["--secret", f"{k}={v}"]
        self.pulumi(*args, stack=stack)

    def unset(self, *keys: str, stack: str = "dev") -> None:
        for k in keys:
            self.pulumi("config", "rm", k, stack=stack)

    def outputs(self, stack: str = "dev") -> dict:
        return json.loads(self.pulumi("stack", "output", "--json", "--show-secrets", stack=stack).stdout)

    def state_file(self, stack: str = "dev") -> Path:
        return self.backend / ".pulumi" / "stacks" / PROJECT / f"{stack}.json"

    def state(self, stack: str = "dev") -> dict:
        return json.loads(self.state_file(stack).read_text())

    def lines(self, name: str) -> list[str]:
        p = self.marks / name
        return p.read_text().splitlines() if p.exists() else []

    def new_stack(self, stack: str, **plain: str) -> None:
        self.pulumi("stack", "init", stack=stack)
        self.config(
            stack=stack,
            secret={"privateKey": self.client_key, "token": TOKEN, "stdinSecret": STDIN_SECRET},
            user=getpass.getuser(),
            port=str(self.sshd.port),
            hostKey=self.host_key,
            marks=str(self.marks),
            **plain,
        )


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    env = Env(tmp_path_factory.mktemp("cmdprov"))
    try:
        env.new_stack("dev")
        yield env
    finally:
        env.sshd.stop()
        print("\npulumi timings (s): " + ", ".join(f"{n} {t:.1f}" for n, t in env.timings))


def test_up_runs_create(e2e: Env) -> None:
    p = e2e.up()
    out = e2e.outputs()
    assert out["loc"] == f"local:{_h(TOKEN)}"  # the secret environment reached the local command
    # stdin reached the remote command, `environment` went through AcceptEnv, no previous stdout yet
    assert out["rem"] == f"v1 stdin:{_h(STDIN_SECRET)} env:from-env prev:"
    assert out["remStderr"] == "to-stderr"
    assert e2e.lines("remote-runs") == ["v1"]
    assert "to-stderr" in p.stdout  # logging=stdoutAndStderr streams stderr to the engine
    assert "created" in p.stdout


def test_unchanged_inputs_run_nothing(e2e: Env) -> None:
    e2e.pulumi("preview", "--expect-no-changes")
    p = e2e.up()
    assert "updated" not in p.stdout and "created" not in p.stdout and "replaced" not in p.stdout, p.stdout
    assert e2e.lines("remote-runs") == ["v1"]


def test_changed_create_updates_in_place(e2e: Env) -> None:
    e2e.config(remoteVersion="v2", localCreate="echo changed-create")
    p = e2e.pulumi("preview", "--diff")
    assert e2e.lines("remote-runs") == ["v1"], "preview ran a command"
    assert "~ create:" in p.stdout and "replace" not in p.stdout, p.stdout
    p = e2e.up()
    out = e2e.outputs()
    # update re-runs create (rem has no `update`), with the previous stdout in the environment
    assert out["rem"] == f"v2 stdin:{_h(STDIN_SECRET)} env:from-env prev:set"
    # loc has an `update` command: that runs instead of the changed create
    assert out["loc"] == f"updated-by-update prev=local:{_h(TOKEN)}"
    assert e2e.lines("remote-runs") == ["v1", "v2"]
    assert "updated" in p.stdout and "replaced" not in p.stdout, p.stdout


def test_changed_triggers_replace_and_run_delete(e2e: Env) -> None:
    e2e.config(trigger="t2")
    p = e2e.pulumi("preview", "--diff")
    assert "triggers" in p.stdout and "replace" in p.stdout, p.stdout
    p = e2e.up()
    assert "replaced" in p.stdout, p.stdout
    assert e2e.lines("local.log") == [f"local-delete prev=updated-by-update prev=local:{_h(TOKEN)}"]
    assert e2e.outputs()["loc"] == "changed-create"  # the replacement ran create
    assert e2e.lines("remote-runs") == ["v1", "v2"]  # rem untouched


def test_failing_command_fails_up_with_its_output(e2e: Env) -> None:
    e2e.config(remoteFail="true")
    p = e2e.up(ok=False)
    assert 'Process exited with status 7: running "echo out-marker; echo err-marker >&2; exit 7":' in p.stdout, p.stdout
    assert "out-marker" in p.stdout and "err-marker" in p.stdout
    e2e.unset("remoteFail")
    # the failed update left the old state: back at the old inputs there is nothing to do
    e2e.pulumi("preview", "--expect-no-changes")


def test_wrong_pinned_host_key_fails(e2e: Env) -> None:
    e2e.config(hostKey=e2e.other_host_key, dialErrorLimit="0")
    t = time.monotonic()
    p = e2e.up(ok=False)
    assert "host key mismatch" in p.stdout, p.stdout
    assert time.monotonic() - t < 30
    assert e2e.lines("remote-runs") == ["v1", "v2"]
    e2e.config(hostKey=e2e.host_key)
    e2e.unset("dialErrorLimit")
    e2e.pulumi("preview", "--expect-no-changes")


def test_secrets_never_in_plain_text_in_the_backend(e2e: Env) -> None:
    key_body = "".join(line for line in e2e.client_key.splitlines() if "PRIVATE KEY" not in line)
    needles = [TOKEN, STDIN_SECRET, key_body[:40], key_body[-40:]]
    files = [p for p in (e2e.backend / ".pulumi").rglob("*") if p.is_file()]
    assert e2e.state_file() in files
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle.encode() not in data, f"{needle[:12]}... in plain text in {path}"
    by_name = {r["urn"].rsplit("::", 1)[-1]: r for r in e2e.state()["checkpoint"]["latest"]["resources"]}
    rem, loc = by_name["rem"]["outputs"], by_name["loc"]["outputs"]
    assert "ciphertext" in rem["connection"] and "ciphertext" in rem["stdin"]
    assert "ciphertext" in loc["environment"]["TOKEN"]


def test_destroy_runs_delete(e2e: Env) -> None:
    e2e.pulumi("destroy", "--yes", "--skip-preview")
    assert e2e.lines("remote.log") == [f"remote-delete prev=v2 stdin:{_h(STDIN_SECRET)} env:from-env prev:set"]
    assert e2e.lines("local.log")[1:] == ["local-delete prev=changed-create"]
    resources = e2e.state()["checkpoint"]["latest"].get("resources") or []
    assert not [r for r in resources if r["type"].startswith("command:")]


def test_reboot_pattern_dials_until_sshd_is_back_within_the_timeout(e2e: Env) -> None:
    port = _free_port()
    e2e.new_stack("wait", mode="wait", waitPort=str(port), dialErrorLimit="-1", timeout="40s")
    late = Sshd(e2e.root / "sshd-late", port, e2e.keys / "host", e2e.keys / "authorized_keys")
    starter = threading.Timer(3.0, late.start)
    starter.start()
    try:
        t = time.monotonic()
        p = e2e.up(stack="wait")
        took = time.monotonic() - t
        assert e2e.outputs(stack="wait")["wait"] == "up"
        assert took >= 3.0, p.stdout
        assert "Dial 1/inf failed: retrying" in p.stdout  # the refused dials were retried
        # Now the host never comes back: the custom timeout (3s) ends the unlimited dialing.
        e2e.config(stack="wait", waitPort=str(_free_port()), timeout="3s")
        t = time.monotonic()
        p = e2e.up(stack="wait", ok=False)
        assert "timed out after 3s" in p.stdout, p.stdout
        assert time.monotonic() - t < 20
    finally:
        starter.join()
        late.stop()
    e2e.pulumi("destroy", "--yes", "--skip-preview", stack="wait")
