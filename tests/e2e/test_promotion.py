"""End to end: promotion (staging -> prod) with the real engine, file backend and two fake TDX hosts.

Set up like tests/e2e/test_program.py (the same `Engine`, tests/support/engine.py): the tracked project copied to a
temp dir, one file backend, TDX_VLLM_FIRMWARE_DIR = a firmware/ copy pinning the harness's fake
gpu-admin-tools wheel, TDX_VLLM_ARTIFACT_DIR = the fixture TD artifacts.

- `staging` (host `stg-gpu`) is brought up: it exports `promotable` (ready is true);
- `prod` (host `prod-gpu`) has `promotion.fromStack: organization/tdx-vllm/staging` and the same
  pins: `preview` passes and `up` succeeds against the second host;
- prod then runs with its own firmware directory whose VBIOS pin differs and with another TDX module
  pin: `preview` and `up` are refused, naming both fields, before any host step runs;
- a staging that has not attested (`promotable` null) is refused too.

The tests run in file order and build on each other.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator

import pytest
import yaml

from tests.support.engine import Engine, apply_calls, engine_unavailable
from tests.support.hosts import profiles as H
from tests.support.hosts.nshost import namespace_hosts

STAGING_HOST, PROD_HOST = "stg-gpu", "prod-gpu"
FROM_STACK = "organization/tdx-vllm/staging"
PROD_PROFILE = H.TDX_READY.replace(name="tdx_ready_prod", hostname="tdx-ready-prod")
OTHER_VBIOS = "96.00.AA.00.01"
OTHER_MODULE = "1.5.20"
# Intel's published MRSEAM of TDX module 1.5.16 (tests/fixtures/tdx-module/intel-releases-and-hashes.md).
MRSEAM_1_5_16 = "7bf063280e94fb051f5dd7b1fc59ce9aac42bb961df8d44b709c9b0ff87a7b4df648657ba6d1189589feab1d5a3c9a9d"

_reason = engine_unavailable()
if _reason:
    pytest.skip(_reason, allow_module_level=True)


@pytest.fixture(scope="module")
def promo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, dict]]:
    root = tmp_path_factory.mktemp("promotion")
    with namespace_hosts([H.TDX_READY, PROD_PROFILE]) as hosts:
        eng = Engine(root)
        # The repository's staging/prod stack files are templates (REPLACE values); these stacks
        # get their config from `pulumi config set` like test_program.py's.
        for name in ("staging", "prod"):
            (eng.project / "stacks" / f"Pulumi.{name}.yaml").unlink(missing_ok=True)
        try:
            stg, prod = hosts["tdx_ready"], hosts["tdx_ready_prod"]
            eng.pin_fake_wheel(stg.wheel_sha256)
            eng.new_stack("staging", stg, STAGING_HOST)
            eng.new_stack("prod", prod, PROD_HOST)
            eng.config_set("prod", {"promotion.fromStack": FROM_STACK})
            yield eng, hosts
        finally:
            print("\npulumi timings (s): " + ", ".join(f"{n} {t:.1f}" for n, t in eng.timings))


def test_staging_up_exports_its_pins_as_promotable(promo) -> None:
    eng, _ = promo
    eng.up("staging", "staging up")
    out = eng.outputs("staging")
    assert out["ready"] is True
    p = out["promotable"]
    assert p["schema"] == 1 and p["tdxModules"] == {"1.5.16": MRSEAM_1_5_16} == out["pins"]["tdxModules"]
    assert p["td"]["mrtd"] == out["pins"]["mrtd"] and p["td"]["tdAttributes"] == out["pins"]["tdAttributes"]
    assert p["artifacts"]["firmware"] == out["pins"]["artifacts"]["firmware"]["sha256"]
    assert p["gpu"] == {"h100-sxm": {"vbios": H.H100_VBIOS, "driver": p["gpu"]["h100-sxm"]["driver"]}}
    assert p["gpuAdminTools"]["sha256"] == promo[1]["tdx_ready"].wheel_sha256


def test_prod_with_the_same_pins_previews_and_deploys(promo) -> None:
    eng, hosts = promo
    eng.pulumi("preview", stack="prod", label="prod preview (same pins)")
    eng.up("prod", "prod up (same pins)")
    out = eng.outputs("prod")
    assert out["ready"] is True and out["promotedFrom"] == FROM_STACK
    assert out["promotable"] == eng.outputs("staging")["promotable"]
    assert hosts["tdx_ready_prod"].state()["kvm_intel_tdx"] == "Y"


def test_prod_with_other_pins_is_refused_naming_each_field(promo) -> None:
    eng, hosts = promo
    h = hosts["tdx_ready_prod"]
    other = eng.root / "firmware-other"
    shutil.copytree(eng.firmware, other)
    sku = other / "gpu" / "h100-sxm.yaml"
    old_vbios = yaml.safe_load(sku.read_text())["vbios"]
    sku.write_text(sku.read_text().replace(str(old_vbios), OTHER_VBIOS))
    eng.config_set("prod", {"platform.tdxModule": OTHER_MODULE})
    saved = eng.env["TDX_VLLM_FIRMWARE_DIR"]
    eng.env["TDX_VLLM_FIRMWARE_DIR"] = str(other)
    calls = len(h.calls())
    try:
        for label, args in (
            ("prod preview (refused)", ("preview",)),
            ("prod up (refused)", ("up", "--yes", "--skip-preview")),
        ):
            p = eng.pulumi(*args, stack="prod", ok=False, label=label)
            text = p.stdout
            assert (
                "promotion refused: 3 pins of prod differ from what organization/tdx-vllm/staging exported" in text
            ), text[-6000:]
            assert re.search(
                rf"gpu\.h100-sxm\.vbios: {FROM_STACK} attested {re.escape(H.H100_VBIOS)}, prod would "
                rf"deploy {re.escape(OTHER_VBIOS)}",
                text,
            ), text[-6000:]
            # The module is compared by release and MRSEAM: the one staging attested, the one prod would run.
            assert f"tdxModules.1.5.16: {FROM_STACK} attested {MRSEAM_1_5_16}, prod would deploy nothing" in text
            assert re.search(
                rf"tdxModules\.{re.escape(OTHER_MODULE)}: {FROM_STACK} attested nothing \(not pinned\), prod would "
                r"deploy [0-9a-f]{96}",
                text,
            ), text[-6000:]
            assert "fix: deploy and verify these pins in staging first" in text
            assert "Traceback" not in text
        assert not apply_calls(h, calls) and h.calls()[calls:] == []  # no step ran on the host
        # the refused `up` changed nothing recorded for prod
        assert eng.outputs("prod")["hosts"][PROD_HOST]["ready"] is True
    finally:
        eng.env["TDX_VLLM_FIRMWARE_DIR"] = saved
        eng.config_set("prod", {"platform.tdxModule": "1.5.16"})
    eng.pulumi("preview", "--expect-no-changes", stack="prod")


def test_a_staging_that_has_not_attested_is_refused(promo) -> None:
    eng, _ = promo
    # A staging stack whose last state exports `promotable: null` (a run that did not verify every
    # step): written with `pulumi stack import` of its own exported state, promotable set to null.
    state = json.loads(eng.pulumi("stack", "export", stack="staging").stdout)
    for res in state["deployment"]["resources"]:
        if res["type"] == "pulumi:pulumi:Stack":
            res["outputs"].pop("promotable", None)  # Pulumi drops a null output
            res["outputs"]["ready"] = False
    path = eng.root / "staging-unattested.json"
    path.write_text(json.dumps(state))
    eng.pulumi("stack", "import", "--file", str(path), stack="staging")
    p = eng.pulumi("preview", stack="prod", ok=False, label="prod preview (staging not attested)")
    assert "promotion refused: organization/tdx-vllm/staging has not exported its pins as attested" in p.stdout, (
        p.stdout[-6000:]
    )
