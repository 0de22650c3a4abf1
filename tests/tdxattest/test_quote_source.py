"""configfs-tsm quote source: the checks it makes before trusting a quote it read back. The happy
path needs a TDX TD (the kernel makes `outblob` on read); here a plain directory stands in for the
report entry, which is enough to show each refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from tdxattest.channel.quote_source import ConfigfsTsmQuoteSource, QuoteUnavailable


def entry(root: Path, provider: str = "tdx_guest", generation: str = "7") -> Path:
    d = root / "tdxattest-gateway"
    d.mkdir(parents=True, exist_ok=True)
    (d / "provider").write_text(provider + "\n")
    (d / "generation").write_text(generation + "\n")
    (d / "outblob").write_bytes(b"QUOTE")
    return d


def test_missing_configfs_names_the_kernel_options(tmp_path: Path) -> None:
    with pytest.raises(QuoteUnavailable) as info:
        ConfigfsTsmQuoteSource(root=str(tmp_path / "absent"))
    assert info.value.check == "gateway.quote_unavailable"
    assert "CONFIG_TSM_REPORTS" in info.value.fix and "does not exist" in info.value.seen


def test_a_non_tdx_provider_is_refused(tmp_path: Path) -> None:
    entry(tmp_path, provider="sev_guest")
    with pytest.raises(QuoteUnavailable) as info:
        ConfigfsTsmQuoteSource(root=str(tmp_path))
    assert info.value.expected == "provider tdx_guest" and info.value.seen == "sev_guest"


def test_a_quote_is_only_ours_when_generation_moved_by_one(tmp_path: Path) -> None:
    # A static `generation` is what a racing writer (or no kernel) looks like: the read-back blob
    # cannot be shown to answer our REPORTDATA, so it is refused after the retries.
    d = entry(tmp_path)
    source = ConfigfsTsmQuoteSource(root=str(tmp_path), retries=2)
    with pytest.raises(QuoteUnavailable) as info:
        source.quote(bytes(64))
    assert "did not move by exactly one in 2 tries" in info.value.seen
    assert (d / "inblob").read_bytes() == bytes(64)  # the REPORTDATA was written


def test_report_data_must_be_64_bytes(tmp_path: Path) -> None:
    entry(tmp_path)
    with pytest.raises(ValueError, match="64 bytes"):
        ConfigfsTsmQuoteSource(root=str(tmp_path)).quote(b"short")


def test_an_unreadable_generation_is_named(tmp_path: Path) -> None:
    entry(tmp_path, generation="not-a-number")
    with pytest.raises(QuoteUnavailable) as info:
        ConfigfsTsmQuoteSource(root=str(tmp_path)).quote(bytes(64))
    assert info.value.expected == "an integer in generation"
