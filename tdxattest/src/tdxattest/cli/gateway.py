"""`gateway`: the in-TD attested gateway (tdxattest.gateway) as a long-running command."""

from __future__ import annotations

import argparse

from tdxattest.channel.gateway import GatewayConfig

GATEWAY_DEFAULTS = GatewayConfig()


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Generate a TLS key inside the TD, serve /.well-known/tdx-attestation with quotes bound to "
        "it, and forward the OpenAI API to vLLM on loopback."
    )
    p.add_argument("--listen", default="0.0.0.0:8443", metavar="HOST:PORT", help="default %(default)s")
    p.add_argument("--upstream", default="http://127.0.0.1:8000", metavar="URL", help="vLLM (default %(default)s)")
    p.add_argument(
        "--event-log", default=None, metavar="FILE", help="event log to serve (default: the CCEL table when present)"
    )
    p.add_argument("--gpu-evidence", metavar="JSON", help="GPU evidence the guest agent verified and wrote")
    p.add_argument(
        "--gpu-collect",
        metavar="ARGV_JSON",
        help="the GPU evidence collector as a JSON list, {nonce} for the nonce (the agent passes "
        '["python3", "-m", "guest_agent.nvml", "--nonce", "{nonce}"]); required with --gpu-evidence',
    )
    p.add_argument(
        "--quote-source",
        choices=("tsm", "aa", "software-test"),
        default="tsm",
        help="tsm: configfs-tsm (a TDX TD); aa: the attestation agent of Confidential Containers through "
        "guest-components' api-server-rest (a Kata CoCo pod, whose containers have no configfs-tsm; see --aa-url); "
        "software-test: a TEST PKI quote signer for tests and the dev stack only (needs --test-pki-dir)",
    )
    p.add_argument(
        "--aa-url",
        metavar="URL",
        help="with aa: api-server-rest on loopback (default http://127.0.0.1:8006; it needs "
        "agent.guest_components_rest_api=attestation on the Kata guest kernel command line)",
    )
    p.add_argument(
        "--test-pki-dir",
        metavar="DIR",
        help="with software-test: write the TEST root CA (root-ca.der) and collateral.json here",
    )
    p.add_argument(
        "--test-rtmr3",
        metavar="HEX",
        help="with software-test: the RTMR3 the TEST quotes carry (the guest agent's software register, "
        "so the stack's RTMR3 pin still holds the workload to account)",
    )
    limits = GATEWAY_DEFAULTS
    p.add_argument(
        "--quote-rate",
        type=float,
        default=limits.quote_rate,
        metavar="N",
        help="quotes a second, all clients together (default %(default)s); beyond it 429",
    )
    p.add_argument("--quote-burst", type=int, default=limits.quote_burst, metavar="N", help="default %(default)s")
    p.add_argument(
        "--client-quote-rate",
        type=float,
        default=limits.client_quote_rate,
        metavar="N",
        help="quotes a second per client address (default %(default)s)",
    )
    p.add_argument(
        "--client-quote-burst", type=int, default=limits.client_quote_burst, metavar="N", help="default %(default)s"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    from dataclasses import replace

    from tdxattest.channel.gateway import CCEL_DATA, Gateway, GatewayConfig
    from tdxattest.channel.quote_source import (
        AA_REST_URL,
        AttestationAgentQuoteSource,
        ConfigfsTsmQuoteSource,
        QuoteSource,
        QuoteUnavailable,
    )
    from tdxattest.cli import UsageError
    from tdxattest.cli._common import parse_listen, serve_until_interrupted

    host, port = parse_listen(args.listen)
    collect: tuple[str, ...] = ()
    if args.gpu_collect:
        import json

        try:
            argv = json.loads(args.gpu_collect)
        except ValueError:
            argv = None
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise UsageError(f"--gpu-collect: a JSON list of strings, seen {args.gpu_collect[:80]!r}")
        if not any("{nonce}" in a for a in argv):
            raise UsageError("--gpu-collect: a {nonce} argument (the evidence must be over the client's nonce)")
        collect = tuple(argv)
    source: QuoteSource
    if args.test_rtmr3 and args.quote_source != "software-test":
        raise UsageError("--test-rtmr3 is for --quote-source software-test only (a TD's RTMR3 is its own)")
    if args.aa_url and args.quote_source != "aa":
        raise UsageError("--aa-url is for --quote-source aa only")
    if args.quote_source == "aa":
        try:
            source = AttestationAgentQuoteSource(args.aa_url or AA_REST_URL)
        except ValueError as exc:
            raise UsageError(f"--aa-url: {exc}") from None
    elif args.quote_source == "software-test":
        if not args.test_pki_dir:
            raise UsageError("--quote-source software-test needs --test-pki-dir (where the TEST root CA goes)")
        import os

        try:
            from tdxattest.testing.testpki import SoftwareQuoteProvider, TdIdentity, make_test_pki
        except ModuleNotFoundError:  # a production TD image has no TEST PKI (guest/image/python-modules)
            raise UsageError(
                "--quote-source software-test: the TEST PKI (tdxattest.testing) is not in this installation; "
                "only the dev TD image and a full `pip install` carry it"
            ) from None

        pki = make_test_pki(int(time.time()))
        os.makedirs(args.test_pki_dir, mode=0o700, exist_ok=True)
        with open(os.path.join(args.test_pki_dir, "root-ca.der"), "wb") as fh:
            fh.write(pki.root_ca_der)
        with open(os.path.join(args.test_pki_dir, "collateral.json"), "w", encoding="utf-8") as text_fh:
            text_fh.write(pki.collateral_json())
        td = TdIdentity()
        if args.test_rtmr3:
            try:
                rtmr3 = bytes.fromhex(args.test_rtmr3)
            except ValueError:
                rtmr3 = b""
            if len(rtmr3) != 48:
                raise UsageError(f"--test-rtmr3: 96 hex digits (48 bytes), seen {args.test_rtmr3[:100]!r}")
            td = replace(td, rtmr3=rtmr3)
        source = SoftwareQuoteProvider(pki, td)
        print(
            "WARNING: software-test quote source: quotes are signed by a TEST PKI, not by TDX hardware; "
            "for tests and the dev stack only",
            file=sys.stderr,
        )
    else:
        try:
            source = ConfigfsTsmQuoteSource()
        except QuoteUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    config = GatewayConfig(
        upstream=args.upstream,
        host=host,
        port=port,
        event_log=args.event_log or CCEL_DATA,
        gpu_evidence=args.gpu_evidence,
        gpu_collect=collect,
        quote_rate=args.quote_rate,
        quote_burst=args.quote_burst,
        client_quote_rate=args.client_quote_rate,
        client_quote_burst=args.client_quote_burst,
    )
    if min(args.quote_rate, args.client_quote_rate) <= 0 or min(args.quote_burst, args.client_quote_burst) < 1:
        raise UsageError("--quote-rate and --client-quote-rate must be > 0, the bursts >= 1")
    gateway = Gateway(config, source)

    async def start():
        runner = await gateway.start()
        return runner, {
            "listening": f"https://{host}:{gateway.port}",
            "upstream": args.upstream,
            "tls_spki_sha256": gateway.tls.spki_sha256,
            "quote_source": source.label,
        }

    return serve_until_interrupted(start)
