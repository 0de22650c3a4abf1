"""The options `verify` and `proxy` share: the policy with the stack's pins, the collateral source
and the root CA, turned into an Appraiser (a leading underscore: not a verb itself)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tdxattest.core.policy import Policy
    from tdxattest.dcap.appraise import Appraiser


def read_root_ca(path: str | None) -> bytes | None:
    """`--root-ca`: the DER of a root CA to trust instead of Intel's, or None."""
    from tdxattest.core.files import read_bytes

    return read_bytes(path) if path else None


def appraiser_for(
    policy: Policy, collateral: str | None, pccs: str | None, cache_dir: str | None, root_ca: str | None
) -> Appraiser:
    """`--collateral FILE` or `--pccs URL [--cache-dir DIR]`, and `--root-ca`: the Appraiser."""
    from tdxattest.dcap.appraise import Appraiser, collateral_source

    return Appraiser(collateral_source(collateral, pccs, cache_dir), policy, read_root_ca(root_ca))


def policy_with_pins(policy_path: str | None, pins_path: str | None, accept_mrtd_candidates: bool):
    """The policy file (or the safe defaults) with the stack's `pins.json` merged in."""
    from tdxattest.core.policy import DEFAULT_POLICY, load_policy, with_pins_json

    policy = load_policy(policy_path) if policy_path else DEFAULT_POLICY
    return with_pins_json(policy, pins_path, accept_mrtd_candidates) if pins_path else policy
