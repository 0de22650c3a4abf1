"""See the whole chain on one machine (run by tools/demo.sh, which sets up what it needs first).

One fake TDX host (an OpenSSH server in a network namespace with faked hardware facts; its QEMU is
the real one), `pulumi up` of a `dev` stack that boots the pinned dev guest image on it as a VM
without TDX, then what a client does: the stack's `pins`, the verifying proxy, one chat completion
with the official `openai` client. It prints the answer and the proxy's verdict, then destroys the
stack and stops everything it started. The same world as tests/slow/test_journey.py
(tests/support/journey.py). No TDX here: the quotes are TEST quotes and prove nothing; the point is
to see every link work.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from tests.support.guest_image import ImageBuildFailed, built_images, missing_prerequisite
from tests.support.journey import (
    MODEL_ID,
    NAME,
    STACK,
    UP_TIMEOUT_S,
    audit_records,
    client,
    journey_world,
    pins_file,
    start_proxy,
)

T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {text}", flush=True)


def main() -> int:
    reason = missing_prerequisite()
    if reason:
        print(f"demo: cannot build the guest image here: {reason}", file=sys.stderr)
        return 1
    say("guest image: the pinned dev image (built from guest/image/ or taken from its cache)")
    try:
        images = built_images()
    except ImageBuildFailed as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="tdx-vllm-demo-") as tmp, journey_world(Path(tmp), images[STACK]) as j:
        say(f"host `{NAME}` at {j.host.address}: sshd in a network namespace, real QEMU, no TDX, no GPU")
        say("pulumi up --stack dev   (host steps, then the TD: stage, launch, wait for the agent's `ready`)")
        j.eng.up(STACK, "pulumi up", timeout=UP_TIMEOUT_S)
        out = j.eng.outputs(STACK)
        j.endpoint = out["endpoints"][NAME]
        td = out["hosts"][NAME]["td"]
        say(f"  ready: {out['ready']}  endpoint: {j.endpoint}  td: {json.dumps(td)}")
        pins = pins_file(j, "pins.json")
        doc = json.loads(pins.read_text())
        say(f"pulumi stack output pins --json > pins.json   (tdx: {doc.get('tdx', True)}, rtmr3: {doc['rtmr3'][:16]}…)")
        audit = j.root / "audit.jsonl"
        say(f"tdxattest proxy --upstream {j.endpoint} --pins pins.json --accept-dev-test-root --listen 127.0.0.1:PORT")
        proxy = start_proxy(j, pins, audit)
        say(f"  listening on {proxy}")
        question = "Hello from the attested channel"
        say(f"openai: chat.completions.create(model={MODEL_ID!r}, messages=[user: {question!r}])")
        answer = client(proxy).chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": question}], max_tokens=8
        )
        say(f"  answer (the stand-in echoes): {answer.choices[0].message.content!r}")
        record = audit_records(audit)[-1]
        checks = record["checks"] or {}
        passed = sorted(c for c, outcome in checks.items() if outcome == "pass")
        unchecked = sorted(c for c, outcome in checks.items() if outcome != "pass")
        say(
            f"  proxy verdict: {record['verdict']} (HTTP {record['status']}), quote sha256 "
            f"{record['quote_sha256'][:16]}…, signed by {record['quote_source']}"
        )
        say(f"  checks passed ({len(passed)}): {', '.join(passed)}")
        say(
            f"  not checked ({len(unchecked)}): {', '.join(unchecked)}"
            "   (not pinned by these pins: their `reasons` say why)"
        )
        say("pulumi destroy --stack dev   (stops the TD, removes its files)")
        j.eng.pulumi("destroy", "--yes", "--skip-preview", stack=STACK, timeout=300)
    say("done: the host, the artifact server and the proxy are stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
