"""`eventlog replay`: parse a TD event log (CCEL / TCG2, or dstack's attestation container),
replay RTMR0-3, list the events, and optionally compare with a quote's RTMRs."""

from __future__ import annotations

import argparse
import json
import sys


def configure(p: argparse.ArgumentParser) -> None:
    p.description = "Work with a TD's event log."
    verbs = p.add_subparsers(dest="eventlog_verb", metavar="ACTION", required=True)
    r = verbs.add_parser(
        "replay",
        help="replay RTMR0-3 from an event log",
        description="Parse a CCEL/TCG2 crypto-agile event log (e.g. /sys/firmware/acpi/tables/data/CCEL) or a "
        "dstack attestation file, replay RTMR0-3 and list the events. With --quote, compare with "
        "the quote's RTMRs (exit 1 on a mismatch); a dstack file is compared with the quote it "
        "carries.",
    )
    r.add_argument("file", metavar="FILE")
    r.add_argument("--quote", metavar="Q", help="a TDX quote (v4/v5) to compare the replayed RTMRs with")
    r.add_argument(
        "--format", choices=("auto", "tcg2", "dstack"), default="auto", help="input format (default: auto-detect)"
    )
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(run=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    from tdxattest.core.errors import InputError
    from tdxattest.core.eventlog import replay_log
    from tdxattest.core.loaders import load_event_source, load_td_report
    from tdxattest.core.quote import read_td_report

    source = load_event_source(args.file, args.format)
    replay = replay_log(source.events)
    events = []
    for e in source.events:
        item = e.as_dict()
        if source.names is not None and source.names[e.index]:
            item["name"] = source.names[e.index]
        events.append(item)
    out: dict = {
        "file": args.file,
        "format": source.format,
        "event_count": len(events),
        "rtmrs": replay.as_dict(),
        "events": events,
    }

    quote = None
    if args.quote:
        quote = load_td_report(args.quote)
        quote_source = args.quote
    elif source.quote is not None:
        try:
            quote = read_td_report(source.quote)
        except InputError as exc:
            raise exc.with_file(f"{args.file} (embedded quote)") from None
        quote_source = f"{args.file} (embedded)"
    status = 0
    if quote is not None:
        match = {f"rtmr{i}": replay.rtmrs[i] == quote.rtmrs[i] for i in range(4)}
        out["quote"] = {
            "file": quote_source,
            "mrtd": quote.mrtd.hex(),
            **{f"rtmr{i}": quote.rtmrs[i].hex() for i in range(4)},
            "match": match,
            "ok": all(match.values()),
        }
        status = 0 if all(match.values()) else 1

    if args.json:
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_text(out)
    if status:
        bad = [k for k, v in out["quote"]["match"].items() if not v]
        print(
            f"mismatch: {', '.join(bad)} replayed from {args.file} differ from {out['quote']['file']}", file=sys.stderr
        )
    return status


def _print_text(out: dict) -> None:
    print(f"{out['file']}: {out['format']} event log, {out['event_count']} events")
    for e in out["events"]:
        where = f"RTMR{e['rtmr']}" if e["rtmr"] is not None else f"MR{e['mr_index']}"
        label = e.get("name") or e["detail"]
        print(f"  {e['index']:>3} {where:<6} {e['type']:<34} {e['sha384']}  {label}")
    for name, value in out["rtmrs"].items():
        line = f"{name.upper()}  {value}"
        if "quote" in out:
            line += "  matches quote" if out["quote"]["match"][name] else f"  MISMATCH, quote has {out['quote'][name]}"
        print(line)
