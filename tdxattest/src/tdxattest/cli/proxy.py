"""`proxy`: the client-side verifying proxy (tdxattest.proxy) as a long-running command."""

from __future__ import annotations

import argparse
import os


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Listen on loopback and forward each request to the attested gateway, over TLS connections "
        "that each proved (fresh nonce, quote bound to the TLS key, TCB policy, pins) that they "
        "end inside the pinned TD. Failures answer 502 with the named check; nothing goes upstream."
    )
    from tdxattest.cli._verification import add_appraisal_arguments

    p.add_argument("--upstream", required=True, metavar="URL", help="the gateway, https://HOST:PORT")
    add_appraisal_arguments(p, pins_required=True, dev_test_root=True)
    p.add_argument(
        "--retiring-pins",
        action="append",
        default=[],
        metavar="PINS_JSON",
        help="during a pin rollover: pins being replaced, still accepted (each as a whole, never mixed with "
        "--pins) until the new TD serves; repeatable",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="loopback, or any address with --tls-cert/--tls-key (default %(default)s)",
    )
    p.add_argument("--tls-cert", metavar="PEM", help="serve clients over TLS with this certificate chain")
    p.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    p.add_argument(
        "--reattest-interval",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="attest a kept-alive connection again after this long (default %(default)s)",
    )
    p.add_argument(
        "--audit",
        metavar="JSONL",
        help="audit log, one line per request (default $XDG_STATE_HOME/tdxattest/audit.jsonl)",
    )
    p.add_argument(
        "--require-response-quotes",
        action="store_true",
        help="also ask the gateway for a quote over each request/response and verify it",
    )
    p.set_defaults(run=run)


def default_audit_path() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    directory = os.path.join(base, "tdxattest")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return os.path.join(directory, "audit.jsonl")


def run(args: argparse.Namespace) -> int:
    from tdxattest.channel.proxy import ProxyConfig, VerifyingProxy, check_listen, client_tls_context
    from tdxattest.cli import UsageError
    from tdxattest.cli._common import parse_listen, serve_until_interrupted
    from tdxattest.cli._verification import appraiser_from_args

    host, port = parse_listen(args.listen)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together (the certificate chain and its private key)")
    check_listen(host, tls=bool(args.tls_cert))
    client_tls = client_tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    audit = args.audit or default_audit_path()
    config = ProxyConfig(
        upstream=args.upstream,
        reattest_interval_s=args.reattest_interval,
        audit_path=audit,
        require_response_quotes=args.require_response_quotes,
        dev_test_root=args.accept_dev_test_root,
    )
    appraiser = appraiser_from_args(args)
    proxy = VerifyingProxy(config, appraiser)

    async def start():
        from aiohttp import web

        runner = web.AppRunner(proxy.app(), **proxy.runner_options())
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=client_tls)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]
        return runner, {
            "listening": f"{'https' if client_tls else 'http'}://{host}:{bound}",
            "upstream": args.upstream,
            "audit": audit,
            "root_ca": "TEST, served by the dev gateway (not Intel; pins tdx: false)"
            if args.accept_dev_test_root
            else "TEST (not Intel)"
            if appraiser.root_ca_der
            else "Intel SGX Root CA",
        }

    return serve_until_interrupted(start)
