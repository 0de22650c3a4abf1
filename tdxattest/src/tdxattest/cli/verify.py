"""`verify`: verify a TDX DCAP quote offline (dcap-qvl) and appraise it against a policy."""

from __future__ import annotations

import argparse
import json
import sys


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Verify a TDX DCAP quote v4/v5 with dcap-qvl and apply the policy (TCB status, advisories, "
        "grace period, TD attributes, measurement pins, REPORTDATA); with --attestation, a recorded "
        "answer of the attested gateway, its GPU evidence included (the policy's gpu section and "
        "the stack's GPU pins). Exit 0 accepted, 1 refused, 2 unusable input."
    )
    from tdxattest.cli._verification import add_appraisal_arguments

    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--quote", metavar="Q", help="raw quote file (binary; hex is accepted too)")
    what.add_argument(
        "--attestation",
        metavar="JSON",
        help="the gateway's /.well-known/tdx-attestation answer (needs --nonce): quote, TLS key binding "
        "and GPU evidence, checked as the proxy does (the TLS key is the answer's tls_spki_sha256)",
    )
    p.add_argument("--nonce", metavar="HEX", help="with --attestation: the nonce the answer was asked for")
    add_appraisal_arguments(p, pins_required=False)
    p.add_argument("--at", metavar="RFC3339", help="verification time (default: now)")
    p.add_argument("--report-data", metavar="HEX", help="expected REPORTDATA (64 bytes, hex)")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.set_defaults(run=run)


def parse_time(text: str | None) -> int:
    import time
    from datetime import UTC, datetime

    from tdxattest.core.errors import InputError

    if text is None:
        return int(time.time())
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InputError("--at: an RFC 3339 time such as 2025-07-01T00:00:00Z", repr(text)) from None
    if dt.tzinfo is None:
        raise InputError("--at: an RFC 3339 time with a zone offset (Z or +hh:mm)", repr(text))
    return int(dt.astimezone(UTC).timestamp())


def read_quote(path: str) -> bytes:
    """A quote file: raw bytes, or the same as hex text; refused over 1 MiB before it is parsed."""
    from tdxattest.cli.decode import read_input

    return read_input(path)


def run(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from tdxattest.cli._verification import appraiser_from_args
    from tdxattest.core.errors import InputError

    now = parse_time(args.at)
    if args.attestation is not None:
        return _run_attestation(args, now)
    from tdxattest.core.quote import parse_quote

    quote = read_quote(args.quote)
    try:
        # A file that is not a TDX quote at all (empty, truncated, another format) is unusable input
        # (exit 2); a quote that parses and then fails verification is refused (exit 1).
        parse_quote(quote)
    except InputError as exc:
        raise exc.with_file(args.quote) from None
    expected = None
    if args.report_data is not None:
        try:
            expected = bytes.fromhex(args.report_data.removeprefix("0x"))
        except ValueError:
            raise InputError("--report-data: hex", repr(args.report_data)) from None
        if len(expected) != 64:
            raise InputError("--report-data: 64 bytes of hex", f"{len(expected)} bytes")
    appraiser = appraiser_from_args(args)
    try:
        appraisal = appraiser.appraise(quote, now, expected)
    except InputError as exc:
        raise exc.with_file(args.quote) from None
    out = appraisal.verdict.as_dict()
    out["verified_at"] = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out["quote"] = args.quote
    out["collateral"] = appraisal.collateral
    _emit(out, args.json)
    return 0 if appraisal.verdict.accepted else 1


def _run_attestation(args: argparse.Namespace, now: int) -> int:
    """A recorded gateway answer: the quote bound to (TLS key hash, nonce, GPU evidence digest), then
    the GPU policy over the evidence, as the proxy checks a connection."""
    import base64
    from datetime import UTC, datetime

    from tdxattest.channel.binding import gpu_nonce, report_data_for_key_hash
    from tdxattest.cli._verification import appraiser_from_args
    from tdxattest.core.errors import InputError
    from tdxattest.core.files import read_bytes
    from tdxattest.core.gpu_policy import parse_evidence_doc

    if args.nonce is None or args.report_data is not None:
        from tdxattest.cli import UsageError

        raise UsageError("--attestation needs --nonce (the nonce it was asked for) and takes no --report-data")
    try:
        nonce = bytes.fromhex(args.nonce)
    except ValueError:
        raise InputError("--nonce: hex", repr(args.nonce)[:80]) from None
    try:
        doc = json.loads(read_bytes(args.attestation))
        quote = base64.b64decode(doc["quote"], validate=True)
        spki_sha256 = bytes.fromhex(doc["tls_spki_sha256"])
        gpu = parse_evidence_doc(doc["gpu_evidence"]) if doc.get("gpu_evidence") is not None else None
    except InputError as exc:  # before ValueError, whose subclass it is
        raise exc.with_file(args.attestation) from None
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InputError(
            "the gateway's attestation JSON (quote, tls_spki_sha256, gpu_evidence)", " ".join(str(exc).split())[:160]
        ).with_file(args.attestation) from None
    expected = report_data_for_key_hash(spki_sha256, nonce, gpu_digest=gpu.digest() if gpu is not None else None)
    appraiser = appraiser_from_args(args)
    appraisal = appraiser.appraise(quote, now, expected)
    gpu_verdict = appraiser.appraise_gpus(gpu, gpu_nonce(spki_sha256, nonce), now)
    out = appraisal.verdict.as_dict()
    accepted = appraisal.verdict.accepted and gpu_verdict.accepted
    out["accepted"] = accepted
    out["failures"] = out["failures"] + [f.as_dict() for f in gpu_verdict.failures]
    out["checks"] = out["checks"] + [c.as_dict() for c in gpu_verdict.checks]
    out["gpu"] = gpu_verdict.as_dict()
    out["verified_at"] = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out["attestation"] = args.attestation
    out["collateral"] = appraisal.collateral
    _emit(out, args.json)
    return 0 if accepted else 1


def _emit(out: dict, as_json: bool) -> None:
    if as_json:
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(
        f"{'ACCEPTED' if out['accepted'] else 'REFUSED'}: tcb_status={out.get('tcb_status')} "
        f"advisories={','.join(out.get('advisory_ids') or []) or '-'}"
    )
    report = out.get("td_report")
    if report:
        note = "" if out.get("report_verified", True) else " (from the refused quote, NOT verified)"
        print(f"  TD report{note}:")
        for k in (
            "mrtd",
            "rtmr0",
            "rtmr1",
            "rtmr2",
            "rtmr3",
            "mrseam",
            "td_attributes",
            "xfam",
            "mrconfigid",
            "report_data",
            "tee_tcb_svn",
        ):
            print(f"    {k:<14} {report[k]}")
        a = report["td_attributes_decoded"]
        print(f"    {'':<14} DEBUG={int(a['debug'])} SEPT_VE_DISABLE={int(a['sept_ve_disable'])}")
        print(f"    {'fmspc':<14} {out.get('fmspc')}")
    for g in (out.get("gpu") or {}).get("gpus", []):
        print(f"  GPU: vbios={g['vbios_version']} driver={g['driver_version']} fwid={g['fwid'][:16]}... {g['leaf']}")
    for c in out.get("checks", []):
        if c["outcome"] == "not_checked":
            print(f"  not checked: {c['check']}: {c.get('reason')}")
    for f in out.get("failures", []):
        detail = f" ({f['detail']})" if f.get("detail") else ""
        print(f"  FAIL {f['check']}: expected {f['expected']}, seen {f['seen']}{detail}")
