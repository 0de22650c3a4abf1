"""`tdxattest verify` exit codes and names (issue 17, item 5): 0 accepted, 1 a quote refused, 2 input
that is not usable at all, each with "expected ..., seen ..." and never a traceback. An empty or
truncated quote file is not a quote: 2 (docs/verification.md)."""

from __future__ import annotations

import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tdxattest.dcap.appraise import Appraiser, CachedCollateral
from tdxattest.dcap.cache import CollateralCache
from tdxattest.testing.testpki import TestPki
from tests.support.paths import REPO

FIX = REPO / "tests" / "fixtures" / "tdx-quotes"
QUOTE = FIX / "quotes" / "azure-v4-00806f.bin"
COLLATERAL = FIX / "collateral" / "automata-2025-10-00806f.json"


def verify(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tdxattest", "verify", *argv], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "option, content, expected",
    [
        ("--collateral", b"\xff\xfe{}", "expected collateral JSON in UTF-8"),
        ("--policy", b"\xff: 1\n", "expected a YAML policy (UTF-8, no key twice), seen not UTF-8 text"),
        ("--pins", b"\xff\xfe{}", "expected JSON"),
        ("--pins", b'{"schema": 1, "reasons": ["x"]}', "expected pins.reasons: an object of strings, seen ['x']"),
        ("--policy", b"tcb:\n  allowed: [UpToDate]\n  allowed: [OutOfDate]\n", "duplicate key 'allowed'"),
    ],
)
def test_an_unusable_input_file_exits_2_naming_it(tmp_path: Path, option: str, content: bytes, expected: str) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(content)
    argv = ["--quote", str(QUOTE), "--collateral", str(COLLATERAL), option, str(bad)]
    if option == "--collateral":
        argv = ["--quote", str(QUOTE), option, str(bad)]
    p = verify(*argv)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith(f"error: {bad}: ") and expected in p.stderr, p.stderr


@pytest.mark.parametrize(
    "content, seen",
    [(b"", "seen 0 bytes"), (QUOTE.read_bytes()[:100], "(truncated quote)"), (b"\x03\x00" + bytes(60), "version")],
)
def test_a_file_that_is_not_a_quote_exits_2_before_any_appraisal(tmp_path: Path, content: bytes, seen: str) -> None:
    # It used to go to dcap-qvl, which answered with the first collateral problem it met (exit 1,
    # `collateral.expired`): a refusal about a quote that was never there.
    q = tmp_path / "q.bin"
    q.write_bytes(content)
    p = verify("--quote", str(q), "--collateral", str(COLLATERAL))
    assert p.returncode == 2 and p.stderr.startswith(f"error: {q}: ") and seen in p.stderr, p.stderr
    assert "collateral" not in p.stderr


def test_a_changed_certification_data_type_is_named_in_pccs_mode(pki: TestPki) -> None:
    # No signature covers the certification data type; it used to read "expected an FMSPC, seen none".
    quote = bytearray(pki.quote(bytes(64)))
    offset = 48 + 584 + 4 + 64 + 64
    assert struct.unpack_from("<H", quote, offset)[0] == 6
    struct.pack_into("<H", quote, offset, 7)
    appraiser = Appraiser(CachedCollateral(None, CollateralCache(tempfile.mkdtemp())), root_ca_der=pki.root_ca_der)
    verdict = appraiser.appraise(bytes(quote), int(time.time()), None).verdict
    failure = verdict.failures[0]
    assert (failure.check, failure.seen) == ("quote.certification_data", "type 7"), failure
    assert failure.expected == "certification data type 6 (QE report with the PCK chain)"


def test_a_pck_chain_that_is_not_base64_exits_2_in_pccs_mode(tmp_path: Path) -> None:
    # The chain is read (for its FMSPC) before anything verifies it: a bad padding character used to
    # end in a binascii traceback.
    quote = bytearray(QUOTE.read_bytes())
    body = quote.index(b"-----BEGIN CERTIFICATE-----") + 28
    quote[body + 5] = ord("=")
    q = tmp_path / "q.bin"
    q.write_bytes(bytes(quote))
    p = verify("--quote", str(q), "--pccs", "http://127.0.0.1:9", "--cache-dir", str(tmp_path / "cache"))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith(f"error: {q}: expected base64 certificate text in the quote's PEM PCK chain, seen ")
