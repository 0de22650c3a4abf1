"""The README's "Point a stack at real hosts", followed literally (issue 16).

Every line of that section's command block is typed, as written, into an interactive bash in a
pseudo-terminal, as a new user would: the secrets are typed at Pulumi's hidden `value:` prompts,
`pulumi up` and `destroy` are confirmed at their prompts, and `$EDITOR` is an editor that fills in
the template's REPLACE values. The block must reach a successful `up`, a no-op `up`, then `destroy`,
with nothing typed that the README does not say.

What stands in for the real world, and only that:
- the hosts: one harness host (a real sshd in a network namespace, faked hardware) and a real
  Redfish emulator (sushy-tools) on loopback for its BMC, with the Dell board's rules and iDRAC's
  configuration jobs (staged values apply only through one);
- `~`: a fresh home holding the SSH key the README feeds to `config set`;
- the checkout after `tools/quickstart.sh` (the README's first line): the project's tracked files
  with the suite's `.venv`, `bin/` and `artifacts/` linked in, which the same scripts built (running it
  again here would fetch the firmware from the network; tests talk to loopback only);
- TDX_VLLM_FIRMWARE_DIR: the pins with the harness's gpu-admin-tools wheel (its sha256 differs).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
import yaml

from tests.support.engine import PCCS_API_KEY, apply_calls, engine_unavailable
from tests.support.hosts import profiles as H
from tests.support.hosts.nshost import namespace_hosts
from tests.support.paths import REPO
from tests.support.redfish.emulator import board_from_rules, run_emulator

_reason = engine_unavailable()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

SECTION = "## Point a stack at real hosts"
BMC_PASSWORD = "tdx-S3cr3t-pw-7f3a9c"
PROMPT = "readme-test$ "
# What a terminal answers when asked (xterm): background colour (OSC 11), cursor position (CSI 6n).
TERMINAL_REPLIES = {"\x1b]11;?": "\x1b]11;rgb:0000/0000/0000\x1b\\", "\x1b[6n": "\x1b[1;1R"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


def readme_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION) :]
    start = section.index("```sh\n") + len("```sh\n")
    return [line for line in section[start : section.index("```", start)].splitlines() if line.strip()]


EDITOR = r'''#!{python}
"""The new user's editor: the template's REPLACE values, and the OS and TDX module of their host."""
import re, sys
path = sys.argv[1]
text = open(path).read()
values = {values!r}
for key, value in values.items():
    text, n = re.subn(rf"^(\s*(?:- )?{{key}}:) [^#\n]*?(\s*#.*)?$", rf"\g<1> {{value}}\g<2>", text, count=1, flags=re.M)
    assert n == 1, key
open(path, "w").write(text)
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("readme")
    project, home = root / "checkout", root / "home"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        src, dst = REPO / rel, project / rel
        if rel.startswith("tests/") or not (src.is_file() or src.is_symlink()):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)
    for built in (".venv", "bin", "artifacts"):  # what tools/quickstart.sh leaves in a checkout
        assert (REPO / built).exists(), f"{built} is missing: tools/quickstart.sh"
        (project / built).symlink_to(REPO / built)
    with (
        namespace_hosts([H.TDX_READY]) as hosts,
        run_emulator(
            root / "bmc", board_from_rules("dell"), username="root", password=BMC_PASSWORD, dell_jobs=True
        ) as bmc,
    ):
        host = hosts["tdx_ready"]
        firmware = root / "firmware"
        shutil.copytree(REPO / "firmware", firmware)
        tools = firmware / "gpu" / "gpu-admin-tools.yaml"
        tools.write_text(tools.read_text().replace(yaml.safe_load(tools.read_text())["sha256"], host.wheel_sha256))
        (home / ".ssh").mkdir(parents=True)
        (home / ".ssh" / "id_ed25519").write_text(host.client_private_key)
        editor = root / "editor"
        editor.write_text(
            EDITOR.format(
                python=sys.executable,
                values={
                    "os": "ubuntu-24.04",
                    "tdxModule": f'"{host.profile.tdx_module_version}"',
                    "address": host.address,
                    "hostKey": host.host_key,
                    "endpoint": bmc.url,
                    "tlsFingerprint": bmc.tls.fingerprint,
                },
            )
        )
        editor.chmod(0o755)
        env = {
            "HOME": str(home),
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "TERM": "xterm",
            "LANG": "C.UTF-8",
            "EDITOR": str(editor),
            "TDX_VLLM_FIRMWARE_DIR": str(firmware),
        }
        yield {"project": project, "env": env, "host": host, "bmc": bmc}


class Terminal:
    """An interactive bash in a pseudo-terminal: type a line, answer Pulumi's prompts, read its status."""

    def __init__(self, project: Path, env: dict[str, str]):
        self.bash = pexpect.spawn(
            "bash",
            ["--norc", "--noprofile", "-i"],
            cwd=str(project),
            env=env,
            encoding="utf-8",
            dimensions=(60, 220),
            timeout=300,
        )
        self.bash.sendline(f"PS1='{PROMPT}'")
        self.bash.expect_exact(PROMPT)  # the echo of the line above
        self.bash.expect_exact(PROMPT)
        self.transcript: list[tuple[str, int, float, str]] = []

    def type(self, line: str, answers: dict[str, str]) -> tuple[int, str]:
        t = time.monotonic()
        self.bash.sendline(line)
        out, answered = [], set()
        patterns = [PROMPT, "value: ", "Do you want to perform this", *TERMINAL_REPLIES]
        while True:
            i = self.bash.expect_exact(patterns)
            out.append(self.bash.before)
            if i == 0:
                break
            if i >= 3:  # Pulumi's prompts ask the terminal about itself first: answer as one does
                self.bash.send(TERMINAL_REPLIES[patterns[i]])
            elif i not in answered:  # a prompt redraws itself: answer it once
                answered.add(i)
                self.bash.send(answers[line] if i == 1 else "yes")
                time.sleep(0.3)
                self.bash.send("\r")
        self.bash.sendline('echo "rc=$?."')
        self.bash.expect(r"rc=(\d+)\.")
        rc = int(self.bash.match.group(1))
        self.bash.expect_exact(PROMPT)
        text = ANSI.sub("", "".join(out))
        self.transcript.append((line, rc, time.monotonic() - t, text))
        return rc, text

    def close(self) -> None:
        self.bash.sendline("exit")
        self.bash.close(force=True)


def test_the_readme_section_reaches_up_a_noop_up_and_destroy(world) -> None:
    lines = readme_block()
    assert lines[0].startswith("tools/quickstart.sh"), lines[0]  # done: the checkout is as it leaves it
    secrets = {
        next(ln for ln in lines if "'hosts[0].bmc.password'" in ln): BMC_PASSWORD,
        next(ln for ln in lines if "'dcap.pccsApiKey'" in ln): PCCS_API_KEY,
    }
    host = world["host"]
    term = Terminal(world["project"], world["env"])
    ups = 0
    try:
        for line in lines[1:]:
            command = line.split("#")[0].strip()
            before = len(host.calls())
            rc, out = term.type(line, secrets)
            assert rc == 0, f"{line!r} failed ({rc}):\n{out[-6000:]}"
            assert "warning:" not in out and "mktemp" not in out, out[-3000:]
            if command.startswith("pulumi stack output hosts"):
                facts = json.loads(out[out.index("{") : out.rindex("}") + 1])
                assert facts[next(iter(facts))]["ready"] is True, facts
            if command.endswith("components status --stack mystack"):
                assert out.lstrip().splitlines()[1] == "stack mystack: READY", out  # [0]: the echoed line
            if command == "pulumi up --stack mystack":
                ups += 1
                if ups == 2:  # "again: a converged stack changes nothing"
                    assert "unchanged" in out and not apply_calls(host, before), out[-3000:]
            if command.startswith("pulumi destroy"):
                assert "deleted" in out, out[-3000:]
        assert ups == 2
        state_dir = world["project"] / ".pulumi-state"  # tools/env.sh's local backend
        assert state_dir.is_dir()
        # The secrets were typed at hidden prompts: never echoed, never in plain text in the state.
        everything = "".join(t[3] for t in term.transcript)
        for secret in (BMC_PASSWORD, PCCS_API_KEY):
            assert secret not in everything
            for f in state_dir.rglob("*.json"):
                assert secret not in f.read_text(), f
        assert world["bmc"].patches(), "the BIOS phases went through the BMC"
        assert world["bmc"].events("job") and not world["bmc"].events("bios_not_applied")
    finally:
        term.close()
        print("\nREADME transcript timings (s):")
        for line, rc, took, _ in term.transcript:
            print(f"  {took:6.1f}  rc={rc}  {line.split('#')[0].strip()}")
