"""`collateral fetch`: fetch DCAP collateral from a PCCS / Intel PCS into the verified on-disk cache.
`collateral rim`: fetch or import an NVIDIA RIM (GPU reference values) into the same cache."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def configure(p: argparse.ArgumentParser) -> None:
    p.description = "Work with the DCAP collateral cache."
    verbs = p.add_subparsers(dest="collateral_verb", metavar="ACTION", required=True)
    f = verbs.add_parser(
        "fetch",
        help="fetch (or refresh) collateral for a quote's FMSPC",
        description="Fetch TCB info, QE identity, PCK CRL and root CA CRL (API v4), verify them, and keep the "
        "raw bytes in the cache. A cached set is reused until 7 days before its earliest "
        "nextUpdate. Exit 0 when valid collateral is in the cache, 1 when it is stale and cannot "
        "be refreshed, 2 for unusable input.",
    )
    f.add_argument("--pccs", required=True, metavar="URL", help="PCCS or PCS base URL")
    who = f.add_mutually_exclusive_group(required=True)
    who.add_argument("--quote", metavar="Q", help="take FMSPC and PCK CA from this quote")
    who.add_argument("--fmspc", metavar="F", help="FMSPC (12 hex digits)")
    f.add_argument("--ca", choices=("platform", "processor"), help="PCK CA (default: from the quote, else platform)")
    f.add_argument("--cache-dir", metavar="DIR", help="cache directory (default ~/.cache/tdxattest/collateral)")
    f.add_argument("--at", metavar="RFC3339", help="time to check validity at (default: now)")
    f.add_argument("--force", action="store_true", help="fetch even when the cached set is fresh")
    f.add_argument(
        "--root-crl-url",
        metavar="URL",
        help="where to get the Intel SGX Root CA CRL when the server has no rootcacrl path (Intel PCS); "
        "default: the CRL distribution point in the Intel root certificate. Use for a mirror; "
        "the CRL is verified against the pinned root either way",
    )
    f.add_argument("--out", metavar="FILE", help="also write the collateral as dcap-qvl JSON to FILE")
    f.add_argument("--json", action="store_true", help="print JSON")
    f.set_defaults(run=run_fetch)
    r = verbs.add_parser(
        "rim",
        help="fetch or import an NVIDIA RIM into the cache",
        description="Verify an NVIDIA RIM (the SWID tag's XML signature, its chain to the pinned NVIDIA "
        "CoRIM signing Root CA, validity now) and keep it in the cache, where `verify` and `proxy` "
        "read GPU reference values. Exit 0 when it is in the cache, 1 when it does not verify or "
        "cannot be fetched, 2 for unusable input.",
    )
    r.add_argument("--id", required=True, metavar="ID", help="e.g. NV_GPU_DRIVER_GH100_550.163.01")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", metavar="F", help="the SWID XML (or the RIM service's JSON answer)")
    src.add_argument("--rim-service", metavar="URL", help="fetch it (NVIDIA's: https://rim.attestation.nvidia.com)")
    r.add_argument("--cache-dir", metavar="DIR", help="cache directory (default ~/.cache/tdxattest/collateral)")
    r.add_argument("--at", metavar="RFC3339", help="time to check validity at (default: now)")
    r.add_argument("--rim-root-ca", metavar="PEM", help="a TEST RIM root instead of NVIDIA's (tests, dev stack)")
    r.set_defaults(run=run_rim)


def run_fetch(args: argparse.Namespace) -> int:
    from tdxattest.cli.verify import parse_time, read_quote
    from tdxattest.core.errors import InputError
    from tdxattest.dcap.cache import CollateralCache
    from tdxattest.dcap.collateral import CollateralError

    now = parse_time(args.at)
    if args.quote:
        from tdxattest.core.quote import parse_quote

        try:
            fmspc, quote_ca = parse_quote(read_quote(args.quote)).collateral_key()
        except InputError as exc:
            raise exc.with_file(args.quote) from None
        ca = args.ca or quote_ca
    else:
        fmspc = args.fmspc
        if len(fmspc) != 12 or any(c not in "0123456789abcdefABCDEF" for c in fmspc):
            raise InputError("--fmspc: 12 hex digits", repr(fmspc))
        ca = args.ca or "platform"
    cache = CollateralCache(args.cache_dir, root_crl_url=args.root_crl_url)
    try:
        collateral, status = cache.get(args.pccs, fmspc, ca, now, force_refresh=args.force)
    except CollateralError as exc:
        out: dict[str, Any] = {"ok": False, "failure": {"check": exc.check, "expected": exc.expected, "seen": exc.seen}}
        if exc.fix:
            out["failure"]["fix"] = exc.fix
        if args.json:
            print(json.dumps(out, indent=2))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.out:
        from tdxattest.dcap.cache import write_private

        write_private(args.out, collateral.text.encode())
    status = {k: v for k, v in status.items() if v is not None}
    if args.json:
        print(json.dumps({"ok": True, **status}, indent=2))
    else:
        print(
            f"{status['fmspc']} ({ca}): {status['source']}, TCB evaluation data number "
            f"{status['tcb_evaluation_data_number']}, earliest nextUpdate {status['earliest_next_update']}"
        )
        print(f"  cache: {status['cache_dir']}")
    if status.get("warning"):
        print(f"warning: {status['warning']}", file=sys.stderr)
    return 0


def run_rim(args: argparse.Namespace) -> int:
    import base64

    from tdxattest.cli.verify import parse_time
    from tdxattest.core.files import read_bytes
    from tdxattest.core.rim import RimError
    from tdxattest.dcap.rim_store import RimStore, fetch_rim

    now = parse_time(args.at)
    store = RimStore(args.cache_dir, None, read_bytes(args.rim_root_ca) if args.rim_root_ca else None)
    try:
        if args.file:
            xml = read_bytes(args.file)
            if xml.lstrip().startswith(b"{"):  # the service's JSON answer, saved as is
                try:
                    xml = base64.b64decode(json.loads(xml)["rim"], validate=True)
                except (ValueError, KeyError, TypeError) as exc:
                    raise RimError("gpu.rim_malformed", "the RIM service's JSON with `rim`", str(exc)[:120]) from None
        else:
            xml = fetch_rim(args.rim_service, args.id)
        rim = store.put(args.id, xml, now)
    except RimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.id}: {rim.product} {rim.version}, {len(rim.measurements)} active measurements, signed by "
        f"{rim.signer}, valid until {iso_time(rim.not_after)}; cache: {store.dir}"
    )
    return 0


def iso_time(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
