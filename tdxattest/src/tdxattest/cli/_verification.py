"""The options `verify` and `proxy` share: the policy with the stack's pins, the collateral source
and the root CA, declared once and turned into an Appraiser (a leading underscore: not a verb)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from tdxattest.core.policy import Policy
    from tdxattest.dcap.appraise import Appraiser


def add_appraisal_arguments(
    p: argparse.ArgumentParser, *, pins_required: bool, dev_test_root: bool = False, pins: bool = True
) -> None:
    """--collateral | --pccs [--cache-dir], --pins [--accept-mrtd-candidates], --policy, --rim-service,
    --ocsp-responder, --root-ca; with `dev_test_root`, --accept-dev-test-root in place of a collateral
    source; without `pins`, no --pins (a caller that reads a stack's pins itself: components status)."""
    src = p.add_mutually_exclusive_group(required=not dev_test_root)
    src.add_argument("--collateral", metavar="C", help="collateral JSON (dcap-qvl QuoteCollateralV3 form)")
    src.add_argument(
        "--pccs",
        metavar="URL",
        help="PCCS or PCS base URL; collateral comes from the on-disk cache, fetched/refreshed as needed",
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="collateral cache, and NVIDIA RIMs under rim/ (default ~/.cache/tdxattest/collateral)",
    )
    if pins:
        p.add_argument(
            "--pins", required=pins_required, metavar="PINS_JSON", help="the stack's `pins` output (pins.json)"
        )
        p.add_argument(
            "--accept-mrtd-candidates",
            action="store_true",
            help="with --pins: accept either page-add-order MRTD candidate",
        )
    p.add_argument("--policy", metavar="POLICY_YAML", help="policy file (default: safe defaults)")
    p.add_argument(
        "--rim-service",
        metavar="URL",
        help="fetch NVIDIA RIMs (GPU reference values) missing from the cache from this RIM service "
        "(NVIDIA's: https://rim.attestation.nvidia.com); without it only RIMs already in the cache are used",
    )
    p.add_argument(
        "--ocsp-responder",
        metavar="URL",
        help="check the GPU chains' OCSP status with this responder (NVIDIA's: http://ocsp.ndis.nvidia.com), "
        "responses kept in the cache until their nextUpdate; policy gpu.ocsp makes the status required",
    )
    if dev_test_root:
        src.add_argument(
            "--accept-dev-test-root",
            action="store_true",
            help="the dev stack's TDs without TDX only (pins say `tdx: false`): accept the TEST root and "
            "collateral each answer carries. Such quotes prove nothing; refused for any other pins",
        )
    p.add_argument(
        "--root-ca",
        metavar="DER",
        help="trust this root CA (DER) instead of Intel's (the TEST PKI of dev stacks and tests; never for production)",
    )


def appraiser_from_args(args: argparse.Namespace) -> Appraiser:
    """The Appraiser the options of `add_appraisal_arguments` describe."""
    from tdxattest.cli import UsageError
    from tdxattest.dcap.appraise import appraiser_for

    policy = policy_with_pins(args.policy, args.pins, args.accept_mrtd_candidates)
    # A pin rollover (the proxy's --retiring-pins): each retiring set is a whole policy of its own.
    retiring = tuple(
        policy_with_pins(args.policy, path, args.accept_mrtd_candidates) for path in getattr(args, "retiring_pins", [])
    )
    dev_test_root = getattr(args, "accept_dev_test_root", False)
    if dev_test_root:
        for pins_path in (args.pins, *getattr(args, "retiring_pins", [])):
            check_dev_test_root(pins_path, args.root_ca)
    elif not (args.collateral or args.pccs):
        raise UsageError("one of --collateral or --pccs is required (where the quotes' collateral comes from)")
    return appraiser_for(
        policy,
        collateral_path=args.collateral,
        pccs=args.pccs,
        cache_dir=args.cache_dir,
        root_ca_path=args.root_ca,
        rim_service=args.rim_service,
        ocsp_responder=args.ocsp_responder,
        retiring=retiring,
    )


def check_dev_test_root(pins_path: str | None, root_ca: str | None) -> None:
    """--accept-dev-test-root only with pins of TDs that run without TDX (the dev stack's)."""
    from tdxattest.cli import UsageError
    from tdxattest.core.policy import read_stack_pins

    if root_ca:
        raise UsageError("--accept-dev-test-root takes the TEST root from the gateway: drop --root-ca")
    if not pins_path:
        raise UsageError("--accept-dev-test-root needs --pins (the dev stack's `pins` with `tdx: false`)")
    if read_stack_pins(pins_path).tdx:
        raise UsageError(
            f'--accept-dev-test-root: {pins_path} pins TDs that run with TDX (no `"tdx": false`), so their '
            "quotes must chain to Intel's root: drop --accept-dev-test-root and give --pccs or --collateral "
            "(only the dev stack's TDs without TDX, workload.td.tdx: false, serve TEST quotes)"
        )


def policy_with_pins(policy_path: str | None, pins_path: str | None, accept_mrtd_candidates: bool) -> Policy:
    """The policy file (or the safe defaults) with the stack's `pins.json` merged in."""
    from tdxattest.core.policy import DEFAULT_POLICY, load_policy, with_pins_json

    policy = load_policy(policy_path) if policy_path else DEFAULT_POLICY
    return with_pins_json(policy, pins_path, accept_mrtd_candidates) if pins_path else policy
