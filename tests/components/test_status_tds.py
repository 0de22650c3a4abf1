"""`python -m components status` attests every TD endpoint: the pure parts (which TCB component a
recovery needs, the collateral warning, the exit codes, the JSON and the table) and the attestation
itself against real gateways on loopback serving TEST PKI quotes (tdxattest/channel/probe.py, the
verifying proxy's own code path)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from components.render.status import (
    DAY_S,
    HostStatus,
    LastUpdate,
    StackStatus,
    StepStatus,
    TdCollateral,
    TdGpu,
    TdStatus,
    collateral_warning,
    failure_line,
    render_table,
    to_json,
)
from components.status import command
from components.status.command import TdOptions, read_tds, td_appraiser
from tdxattest.channel.gateway import Gateway, GatewayConfig
from tdxattest.channel.probe import MICROCODE_FIX, MODULE_FIX, PLATFORM_FIX, QE_FIX, PlatformTcb, tcb_recovery
from tdxattest.core.pins import GpuExpectation
from tdxattest.testing.standin import StandinServer
from tdxattest.testing.testpki import (
    OUTDATED_TEE_TCB_SVN,
    TDX_TCB_COMPONENTS,
    SoftwareQuoteProvider,
    TdIdentity,
    TestPki,
)
from tests.support.channel import LoopThread

OK = LastUpdate("update", "succeeded", "2026-12-07T10:00:00Z", "2026-12-07T10:01:00Z")
NOW = 1_800_000_000

# -- which part of the platform a TCB recovery needs (pure) -------------------------------------


def _level(status: str, sgx: tuple[int, ...], pcesvn: int, tdx: tuple[int, ...], types: bool = False) -> dict:
    def comps(svns: tuple[int, ...], names: dict[int, str]) -> list[dict]:
        return [{"svn": s, **({"type": names[i]} if types and i in names else {})} for i, s in enumerate(svns)]

    sgx_names = {0: "Early Microcode Update", 1: "SGX Late Microcode Update"}
    tdx_names = {0: "TDX Module", 1: "TDX Module", 2: "TDX Late Microcode Update"}
    return {
        "tcb": {"sgxtcbcomponents": comps(sgx, sgx_names), "pcesvn": pcesvn, "tdxtcbcomponents": comps(tdx, tdx_names)},
        "tcbStatus": status,
    }


SGX = (3, 3, 2, 2, 4, 1, 0, 5) + (0,) * 8
TDX = (5, 1, 3) + (0,) * 13


def _tcb_info(*levels: dict, module_svn: int = 5) -> dict:
    return {
        "tcbEvaluationDataNumber": 17,
        "tdxModuleIdentities": [
            {"id": "TDX_01", "tcbLevels": [{"tcb": {"isvsvn": module_svn}, "tcbStatus": "UpToDate"}]},
            {"id": "TDX_03", "tcbLevels": [{"tcb": {"isvsvn": 9}, "tcbStatus": "UpToDate"}]},
        ],
        "tcbLevels": list(levels),
    }


NEWEST = _level("UpToDate", SGX, 13, TDX)


def test_nothing_below_the_newest_up_to_date_level_needs_no_fix() -> None:
    assert tcb_recovery(_tcb_info(NEWEST), PlatformTcb(SGX, 13, TDX, 4)) == ()
    higher = PlatformTcb(tuple(s + 1 for s in SGX), 14, (6, 1, 4) + (0,) * 13, 9)
    assert tcb_recovery(_tcb_info(NEWEST), higher) == ()


def test_cpusvn_and_pcesvn_below_name_a_bios_or_microcode_update() -> None:
    old = PlatformTcb((2, 3, 1) + SGX[3:], 11, TDX)
    (fix,) = tcb_recovery(_tcb_info(NEWEST, _level("OutOfDate", (2, 3, 1) + SGX[3:], 11, TDX)), old)
    assert fix.part == "platform" and fix.fix == PLATFORM_FIX
    assert fix.below == ("CPUSVN[0] 2 < 3", "CPUSVN[2] 1 < 2", "PCESVN 11 < 13")
    # Intel's collateral names the components: the names go into the text.
    (named,) = tcb_recovery(_tcb_info(_level("UpToDate", SGX, 13, TDX, types=True)), old)
    assert named.below[0] == "CPUSVN[0] (Early Microcode Update) 2 < 3"
    assert named.text().startswith("CPUSVN[0] (Early Microcode Update) 2 < 3, CPUSVN[2] 1 < 2, PCESVN 11 < 13; fix: ")


def test_tee_tcb_svn_below_names_the_microcode_or_the_tdx_module() -> None:
    # TEE_TCB_SVN[2] is the TDX late microcode update (the TEST PKI's OutOfDate level differs there).
    (fix,) = tcb_recovery(_tcb_info(NEWEST), PlatformTcb(SGX, 13, (5, 1, 2) + (0,) * 13))
    assert (fix.part, fix.below, fix.fix) == (
        "microcode",
        ("TEE_TCB_SVN[2] (TDX late microcode update) 2 < 3",),
        MICROCODE_FIX,
    )
    # With a module version in TEE_TCB_SVN[1], the module's SVN is judged by its identity, TDX_01 here.
    (fix,) = tcb_recovery(_tcb_info(NEWEST, module_svn=7), PlatformTcb(SGX, 13, TDX))
    assert (fix.part, fix.below, fix.fix) == (
        "tdx_module",
        ("TDX module TDX_01 SVN (TEE_TCB_SVN[0]) 5 < 7",),
        MODULE_FIX,
    )
    # ...and only by it: TEE_TCB_SVN[0:2] below the level's own values do not count twice.
    assert tcb_recovery(_tcb_info(_level("UpToDate", SGX, 13, (9, 9, 3) + (0,) * 13)), PlatformTcb(SGX, 13, TDX)) == ()
    # Without a module version (TEE_TCB_SVN[1] = 0) the level's own TEE_TCB_SVN[0:2] are compared.
    no_version = PlatformTcb(SGX, 13, (3, 0, 3) + (0,) * 13)
    (fix,) = tcb_recovery(_tcb_info(_level("UpToDate", SGX, 13, (4, 0, 3) + (0,) * 13)), no_version)
    assert (fix.part, fix.below) == ("tdx_module", ("TEE_TCB_SVN[0] (TDX module) 3 < 4",))
    assert [f.part for f in tcb_recovery(_tcb_info(NEWEST), PlatformTcb((0,) * 16, 0, (1, 1, 0) + (0,) * 13))] == [
        "platform",
        "microcode",
        "tdx_module",
    ]


def test_the_quoting_enclave_below_its_identity_names_the_dcap_packages() -> None:
    qe = {
        "tcbLevels": [{"tcb": {"isvsvn": 8}, "tcbStatus": "UpToDate"}, {"tcb": {"isvsvn": 4}, "tcbStatus": "OutOfDate"}]
    }
    (fix,) = tcb_recovery(_tcb_info(NEWEST), PlatformTcb(SGX, 13, TDX, 4), qe)
    assert (fix.part, fix.below, fix.fix) == ("quoting_enclave", ("QE ISV SVN 4 < 8",), QE_FIX)
    assert tcb_recovery(_tcb_info(NEWEST), PlatformTcb(SGX, 13, TDX, None), qe) == ()


def test_the_newest_up_to_date_level_is_the_reference_not_the_first() -> None:
    # A level newer than every UpToDate one (e.g. OutOfDateConfigurationNeeded first) is not the target.
    info = _tcb_info(_level("OutOfDateConfigurationNeeded", (9,) * 16, 99, TDX), NEWEST)
    assert tcb_recovery(info, PlatformTcb(SGX, 13, TDX)) == ()
    # No UpToDate level, or a TCB info without usable levels: nothing to compare with.
    assert tcb_recovery(_tcb_info(_level("OutOfDate", SGX, 13, TDX)), PlatformTcb((0,) * 16, 0, TDX)) == ()
    assert tcb_recovery({"tcbLevels": "nonsense"}, PlatformTcb((0,) * 16, 0, TDX)) == ()
    assert (
        tcb_recovery(
            {"tcbLevels": [{"tcbStatus": "UpToDate", "tcb": {"sgxtcbcomponents": ["x"]}}]},
            PlatformTcb((0,) * 16, 0, TDX),
        )
        == ()
    )


# -- judging and rendering (pure) ---------------------------------------------------------------


def _coll(days_left: float, number: int = 17) -> TdCollateral:
    return TdCollateral(int(NOW + days_left * DAY_S), "tcb_info", number, "90C06F000000", "/cache/90C06F000000")


def test_the_collateral_warning_comes_n_days_ahead_and_names_the_fix() -> None:
    assert collateral_warning(_coll(8), NOW, 7) is None
    soon = collateral_warning(_coll(3), NOW, 7)
    assert (
        soon is not None and "for FMSPC 90C06F000000 expires at" in soon and "in 3.0 days (warned 7 days ahead)" in soon
    )
    assert "(tcb_info)" in soon and "; fix: refresh it" in soon
    assert collateral_warning(_coll(3), NOW, 2) is None
    gone = collateral_warning(_coll(-1), NOW, 7)
    assert gone is not None and "expired at" in gone
    assert collateral_warning(None, NOW, 7) is None
    assert collateral_warning(TdCollateral(None, None, None), NOW, 7) is None


def _td(name: str, state: Any = "attested", **kw: Any) -> TdStatus:
    return TdStatus(name, f"https://10.0.0.{len(name)}:8443", name, state, **kw)


def _host(name: str, *states: Any) -> HostStatus:
    return HostStatus(
        name, "10.0.0.2:22", None, tuple(StepStatus(f"s{i}", f"{name}-s{i}", st) for i, st in enumerate(states))
    )


def test_exit_codes_with_tds() -> None:
    hosts = (_host("gpu-a", "in_sync"),)
    assert StackStatus("s", OK, True, hosts, (_td("gpu-a"),), NOW).exit_code == 0
    refused = StackStatus("s", OK, True, hosts, (_td("gpu-a", "refused", failures=("pin.rtmr3: ...",)),), NOW)
    assert refused.exit_code == 4 and not refused.ready
    assert any("did not prove itself" in n for n in refused.notes())
    assert StackStatus("s", OK, True, hosts, (_td("gpu-a", "unreachable"),), NOW).exit_code == 4
    # A refused TD outranks drift, and a host problem: the stack serves a TD that does not prove itself.
    assert StackStatus("s", OK, True, (_host("gpu-a", "drifted"),), (_td("gpu-a", "refused"),)).exit_code == 4
    assert StackStatus("s", OK, True, (_host("gpu-a", "refused"),), (_td("gpu-a", "refused"),)).exit_code == 4
    assert StackStatus("s", OK, True, (_host("gpu-a", "drifted"),), (_td("gpu-a"),)).exit_code == 3
    # After a failed `up` (or none), a refused TD is one more thing not ready.
    failed = LastUpdate("update", "failed", "t", "t")
    assert StackStatus("s", failed, True, hosts, (_td("gpu-a", "refused"),)).exit_code == 1
    # Not attested (no collateral source given): not ready, and no claim about the TD either way.
    note = "the TDs (gpu-a) were not attested: ...; fix: add --pccs URL"
    skipped = StackStatus("s", OK, True, hosts, (_td("gpu-a", "not_attested"),), NOW, td_note=note)
    assert skipped.exit_code == 1 and note in skipped.notes()
    assert StackStatus("s", OK, True, (_host("gpu-a", "drifted"),), (_td("gpu-a", "not_attested"),)).exit_code == 1
    # Warnings alone do not change the verdict.
    warned = StackStatus("s", OK, True, hosts, (_td("gpu-a", collateral=_coll(1)),), NOW)
    assert warned.exit_code == 0 and warned.warnings()[0].startswith("TD gpu-a: the collateral for FMSPC")


def test_warnings_name_the_hosts_a_tcb_recovery_affects() -> None:
    fix = "TEE_TCB_SVN[2] (TDX late microcode update) 2 < 3; fix: update the CPU microcode"
    tds = (
        _td("gpu-a", "refused", tcb_status="OutOfDate", recovery=(fix,), collateral=_coll(20, 17)),
        _td("gpu-b", collateral=_coll(20, 18)),
        TdStatus("kubernetes", "https://203.0.113.9:443", None, "attested", collateral=_coll(20, 18)),
    )
    warnings = StackStatus("s", OK, True, (), tds, NOW).warnings()
    assert warnings[0] == f"TCB recovery affects host gpu-a, TD gpu-a (TCB status OutOfDate): {fix}"
    assert warnings[1].startswith("TD gpu-a judged with collateral older than tcbEvaluationDataNumber 18 (gpu-a: 17)")
    assert len(warnings) == 2


def test_failure_lines_name_the_check_and_the_fix() -> None:
    line = failure_line("pin.rtmr3", "aa", "bb", None, "https://h:1")
    assert line.startswith("pin.rtmr3: expected aa, seen bb; fix: the TD does not run what the stack pins")
    line = failure_line(
        "tcb.status_not_allowed", ["UpToDate"], "OutOfDate", None, "https://h:1", ("X 1 < 2; fix: do Y",)
    )
    assert line == "tcb.status_not_allowed: expected UpToDate, seen OutOfDate; fix: do Y"
    line = failure_line("upstream.unreachable", "a TLS connection", "refused", "is the gateway running?", "https://h:1")
    assert line.startswith("upstream.unreachable: cannot reach https://h:1: refused; fix: ")
    line = failure_line("attestation.test_pki", "x", "none", "the upstream is not the dev stack's TD: drop it", None)
    assert line.endswith("; fix: the upstream is not the dev stack's TD: drop it")
    assert failure_line("gpu.cc_off", "on", "off", "GPU 0", None).startswith(
        "gpu.cc_off: expected on, seen off (GPU 0); fix: "
    )
    assert "; fix: do not send it prompts until it attests" in failure_line("new.check", 1, 2, None, None)


def test_json_and_table_carry_the_td_section() -> None:
    gpu_step = StepStatus(
        "gpu-cc", "gpu-a-gpu-mode", "in_sync", facts={"gpus": [{"bdf": "0000:17:00.0", "cc_mode": "on"}]}
    )
    hosts = (HostStatus("gpu-a", "10.0.0.2:22", None, (gpu_step,)),)
    td = TdStatus(
        "gpu-a",
        "https://10.0.0.2:8443",
        "gpu-a",
        "attested",
        tcb_status="UpToDate",
        collateral=_coll(3),
        gpu=TdGpu(True, True, 1, "on", "prod", ("96.00.9F.00.01",), ("550.90.07",)),
        quote_source="tsm",
    )
    status = StackStatus("prod", OK, True, hosts, (td,), NOW, 7)
    doc = to_json(status)
    t = doc["tds"]["gpu-a"]
    assert set(t) == {
        "endpoint", "host", "state", "reachable", "accepted", "tcbStatus", "advisories", "failures",
        "tcbRecovery", "quoteSource", "collateral", "gpu",
    }  # fmt: skip
    assert (t["reachable"], t["accepted"], t["tcbStatus"], t["host"]) == (True, True, "UpToDate", "gpu-a")
    assert t["collateral"]["tcbEvaluationDataNumber"] == 17 and t["collateral"]["nextUpdate"].endswith("Z")
    assert t["collateral"]["warning"] and doc["warnings"] == [f"TD gpu-a: {t['collateral']['warning']}"]
    assert t["gpu"] == {
        "verdict": "accepted", "evidence": True, "count": 1, "ccMode": "on", "environment": "prod",
        "vbios": ["96.00.9F.00.01"], "driver": ["550.90.07"], "hostCcModes": ["0000:17:00.0: on"],
    }  # fmt: skip
    table = render_table(status)
    assert "TD     HOST   STATE     DETAIL" in table
    assert "gpu-a  gpu-a  attested  https://10.0.0.2:8443" in table
    assert "GPU accepted, 1 GPU(s), CC on (prod); host says CC 0000:17:00.0: on" in table
    assert "  warning: TD gpu-a: the collateral" in table
    # A stack without endpoints keeps the table it had.
    assert (
        "TD " not in render_table(StackStatus("dev", OK, True, hosts))
        and to_json(StackStatus("dev", OK, True, hosts))["tds"] == {}
    )


# -- against real gateways on loopback -----------------------------------------------------------


class Gateways:
    """TEST-PKI gateways (each with a stand-in vLLM) on the module's loop; all stopped at the end."""

    def __init__(self, loop: LoopThread) -> None:
        self.loop = loop
        self._running: dict[str, tuple[Any, StandinServer]] = {}

    def start(self, pki: TestPki, td: TdIdentity = TdIdentity()) -> str:
        async def go() -> str:
            upstream = StandinServer()
            await upstream.start()
            gateway = Gateway(
                GatewayConfig(upstream=upstream.url, host="127.0.0.1", port=0, event_log=None),
                SoftwareQuoteProvider(pki, td),
            )
            runner = await gateway.start()
            url = f"https://127.0.0.1:{gateway.port}"
            self._running[url] = (runner, upstream)
            return url

        return self.loop.run(go())

    def stop(self, url: str) -> None:
        runner, upstream = self._running.pop(url)

        async def go() -> None:
            await runner.cleanup()
            await upstream.stop()

        self.loop.run(go())

    def stop_all(self) -> None:
        for url in list(self._running):
            self.stop(url)


@pytest.fixture
def gateways(loop: LoopThread) -> Iterator[Gateways]:
    g = Gateways(loop)
    yield g
    g.stop_all()


def _outputs(pinned: TdIdentity, endpoints: dict[str, str | None], *, tdx: bool = True) -> dict[str, Any]:
    return {"ready": True, "pins": replace(pinned.stack_pins(), tdx=tdx).to_json(), "endpoints": endpoints}


def _test_root(tmp_path: Path, pki: TestPki, collateral: str | None = None) -> TdOptions:
    (tmp_path / "root.der").write_bytes(pki.root_ca_der)
    (tmp_path / "collateral.json").write_text(collateral or pki.collateral_json())
    return TdOptions(collateral=str(tmp_path / "collateral.json"), root_ca=str(tmp_path / "root.der"))


def _attest(
    outputs: dict[str, Any], options: TdOptions, hosts: tuple[str, ...] = ("gpu-a", "gpu-b")
) -> tuple[TdStatus, ...]:
    endpoints = outputs["endpoints"]
    return read_tds(
        endpoints, {n: (n if n in hosts else None) for n in endpoints}, td_appraiser(outputs, options), options
    )


def test_an_accepted_td_shows_its_verdict_tcb_and_collateral(gateways: Gateways, pki: TestPki, tmp_path: Path) -> None:
    td = TdIdentity()
    url = gateways.start(pki, td)
    (seen,) = _attest(_outputs(td, {"gpu-a": url}), _test_root(tmp_path, pki))
    assert (seen.state, seen.reachable, seen.accepted, seen.failures) == ("attested", True, True, ())
    assert (seen.name, seen.host, seen.endpoint, seen.tcb_status, seen.advisories) == (
        "gpu-a",
        "gpu-a",
        url,
        "UpToDate",
        (),
    )
    assert seen.collateral is not None
    assert seen.collateral.next_update == pki.next_update and seen.collateral.tcb_evaluation_data_number == 1
    assert seen.collateral.fmspc == pki.fmspc and seen.recovery == () and seen.quote_source == "software-test-pki"
    # No GPU pinned and none served: the GPU verdict is an accepted "none served".
    assert seen.gpu == TdGpu(True, False, 0, None, None)
    # The dev stack's way: pins that say tdx: false, the TEST root and collateral from the gateway.
    dev = TdOptions(dev_test_root=True)
    (seen,) = _attest(_outputs(td, {"gpu-a": url}, tdx=False), dev)
    assert seen.accepted and seen.collateral is not None and seen.collateral.source == "the dev gateway's TEST PKI"


def test_a_td_whose_pins_differ_is_refused_naming_the_check(gateways: Gateways, pki: TestPki, tmp_path: Path) -> None:
    url = gateways.start(pki, TdIdentity())
    pinned = replace(TdIdentity(), rtmr3=bytes.fromhex("ab" * 48))
    (seen,) = _attest(_outputs(pinned, {"gpu-a": url}), _test_root(tmp_path, pki))
    assert (seen.state, seen.reachable, seen.accepted) == ("refused", True, False)
    assert seen.failures == (
        f"pin.rtmr3: expected {'ab' * 48}, seen {'00' * 48}; fix: the TD does not run what the stack pins: stage and "
        "relaunch the pinned image (pulumi up --replace its <host>-td-stage and <host>-td-launch resources; pulumi "
        "stack --show-urns); if it still differs, do not send it prompts",
    )
    assert seen.tcb_status == "UpToDate"  # dcap-qvl verified it; the pins refused it


def test_a_stopped_gateway_is_named_unreachable(gateways: Gateways, pki: TestPki, tmp_path: Path) -> None:
    url = gateways.start(pki)
    gateways.stop(url)
    tds = _attest(_outputs(TdIdentity(), {"gpu-a": url, "gpu-b": None}), _test_root(tmp_path, pki))
    down, never = tds
    assert (down.state, down.reachable, down.accepted) == ("unreachable", False, False)
    assert down.failures[0].startswith(f"upstream.unreachable: cannot reach {url}: ")
    assert "; fix: is the TD running?" in down.failures[0]
    assert never.state == "unreachable" and never.endpoint is None
    assert never.failures[0].startswith(
        "endpoint: expected https://HOST:PORT in the stack output endpoints.gpu-b, seen None"
    )


def test_collateral_near_its_next_update_gives_the_warning(gateways: Gateways, pki: TestPki, tmp_path: Path) -> None:
    url = gateways.start(pki)
    now = int(time.time())
    soon = now + 3 * DAY_S
    (seen,) = _attest(
        _outputs(TdIdentity(), {"gpu-a": url}), _test_root(tmp_path, pki, pki.collateral_json(next_update=soon))
    )
    assert seen.accepted and seen.collateral is not None and seen.collateral.next_update == soon
    status = StackStatus("staging", OK, True, (), (seen,), now, 7)
    assert status.exit_code == 0
    (warning,) = status.warnings()
    assert warning.startswith(f"TD gpu-a: the collateral for FMSPC {pki.fmspc} expires at ")
    assert (
        "in 3.0 days" in warning
        and to_json(status)["tds"]["gpu-a"]["collateral"]["warning"] == warning[len("TD gpu-a: ") :]
    )
    assert StackStatus("staging", OK, True, (), (seen,), now, 2).warnings() == []


def test_an_out_of_date_tcb_names_the_fix_and_the_host(gateways: Gateways, pki: TestPki, tmp_path: Path) -> None:
    td = replace(TdIdentity(), tee_tcb_svn=OUTDATED_TEE_TCB_SVN)
    url = gateways.start(pki, td)
    (seen,) = _attest(_outputs(td, {"gpu-b": url}), _test_root(tmp_path, pki))
    assert (seen.state, seen.tcb_status, seen.advisories) == ("refused", "OutOfDate", ("INTEL-SA-TEST-0001",))
    below = f"TEE_TCB_SVN[2] (TDX late microcode update) {OUTDATED_TEE_TCB_SVN[2]} < {TDX_TCB_COMPONENTS[2]}"
    assert seen.recovery == (f"{below}; fix: {MICROCODE_FIX}",)
    assert seen.failures[0] == f"tcb.status_not_allowed: expected UpToDate, seen OutOfDate; fix: {MICROCODE_FIX}"
    assert seen.failures[1].startswith("tcb.advisory_not_allowed: expected none, seen INTEL-SA-TEST-0001; fix: ")
    status = StackStatus("staging", OK, True, (), (seen,), int(time.time()))
    assert status.exit_code == 4
    assert (
        f"TCB recovery affects host gpu-b, TD gpu-b (TCB status OutOfDate): {below}; fix: {MICROCODE_FIX}"
        in status.warnings()
    )
    assert not any("CPUSVN" in r or "PCESVN" in r for r in seen.recovery)  # CPU and PCE are current: no BIOS fix


# -- the command, its options and exit codes (Pulumi's answers stubbed) ---------------------------


@pytest.fixture
def fake_stack(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, Any]], None]:
    """`pulumi ...` answers with a stack of two hosts (their steps in sync), a successful last `up` and
    `outputs`."""

    def install(outputs: dict[str, Any]) -> None:
        def pulumi_json(args: list[str], project: Path) -> Any:
            if args[:2] == ["stack", "history"]:
                return [{"version": 1, "kind": "update", "result": "succeeded", "startTime": "t", "endTime": "e"}]
            if args[:2] == ["stack", "output"]:
                return outputs
            return {}

        def read_host(stack: Any, host: Any, index: int) -> HostStatus:
            return HostStatus(
                host.name, f"10.0.0.{index + 2}:22", None, (StepStatus("gpu-cc", f"{host.name}-gpu-mode", "in_sync"),)
            )

        hosts = (SimpleNamespace(name="gpu-a"), SimpleNamespace(name="gpu-b"))
        monkeypatch.setattr(command, "pulumi_json", pulumi_json)
        monkeypatch.setattr(
            command, "load_from_cli_json", lambda doc, name, where: SimpleNamespace(hosts=hosts, proxy=None)
        )
        monkeypatch.setattr(command, "read_host", read_host)

    return install


def test_the_command_attests_prints_and_exits(
    gateways: Gateways,
    pki: TestPki,
    tmp_path: Path,
    fake_stack: Callable[[dict[str, Any]], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    good, bad = TdIdentity(), replace(TdIdentity(), tee_tcb_svn=OUTDATED_TEE_TCB_SVN)
    a, b = gateways.start(pki, good), gateways.start(pki, bad)
    fake_stack(_outputs(good, {"gpu-a": a}, tdx=False))
    assert command.main(["--stack", "dev", "--accept-dev-test-root", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ready"] is True and doc["tds"]["gpu-a"]["accepted"] is True and doc["warnings"] == []
    assert any("TEST quotes" in n for n in doc["notes"])

    fake_stack(_outputs(good, {"gpu-a": a, "gpu-b": b}, tdx=False))
    assert command.main(["--stack", "dev", "--accept-dev-test-root"]) == 4
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "stack dev: NOT READY"
    assert f"gpu-a  gpu-a  attested  {a}" in table and "gpu-b  gpu-b  refused   https://127.0.0.1:" in table
    assert "tcb.status_not_allowed: expected UpToDate, seen OutOfDate; fix: update the CPU microcode" in table

    # No collateral source: the TDs are listed, not attested, with the options to pass; not ready.
    assert command.main(["--stack", "dev", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert {t["state"] for t in doc["tds"].values()} == {"not_attested"}
    assert any("fix: add --pccs URL" in n and "--accept-dev-test-root" in n for n in doc["notes"])

    # Options that do not fit the stack: one message, exit 2, no traceback.
    fake_stack(_outputs(good, {"gpu-a": a}, tdx=True))
    assert command.main(["--stack", "prod", "--accept-dev-test-root"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: status: cannot attest the TDs: ") and "tdx: true" in err
    assert command.main(["--stack", "prod", "--collateral", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    fake_stack({"ready": True, "pins": {"schema": 99}, "endpoints": {"gpu-a": a}})
    assert command.main(["--stack", "prod", "--accept-dev-test-root"]) == 2
    assert "the stack output `pins` is unusable" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        command.main(["--stack", "prod", "--warn-days", "-1"])
    assert exited.value.code == 2


def test_a_td_that_serves_no_gpu_evidence_when_the_pins_want_gpus_is_refused(
    gateways: Gateways, pki: TestPki, tmp_path: Path
) -> None:
    url = gateways.start(pki)
    outputs = _outputs(TdIdentity(), {"gpu-a": url})
    outputs["pins"] = replace(
        TdIdentity().stack_pins(),
        gpu=GpuExpectation(count=1, vbios=("96.00.9F.00.01",), driver=("550.90.07",), mode="on"),
    ).to_json()
    (seen,) = _attest(outputs, _test_root(tmp_path, pki))
    assert seen.state == "refused" and seen.tcb_status == "UpToDate"
    assert seen.gpu == TdGpu(False, False, 0, None, None)
    assert seen.failures[0].startswith("gpu.evidence_missing: expected GPU evidence in the attestation")
    assert seen.failures[0].endswith(
        "; fix: the TD served no GPU evidence though the stack pins GPUs: check the host's gpu-cc "
        "step, then relaunch the TD (pulumi up --replace its <host>-td-launch resource; pulumi stack --show-urns)"
    )
    host = HostStatus(
        "gpu-a",
        "10.0.0.2:22",
        None,
        (
            StepStatus(
                "gpu-cc", "gpu-a-gpu-mode", "in_sync", facts={"gpus": [{"bdf": "0000:17:00.0", "cc_mode": "on"}]}
            ),
        ),
    )
    gpu = to_json(StackStatus("prod", OK, True, (host,), (seen,), int(time.time())))["tds"]["gpu-a"]["gpu"]
    assert (gpu["verdict"], gpu["evidence"], gpu["ccMode"], gpu["hostCcModes"]) == (
        "refused",
        False,
        None,
        ["0000:17:00.0: on"],
    )
