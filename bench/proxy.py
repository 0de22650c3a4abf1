"""Benchmark: the verifying proxy's cost over a direct client of the same attested gateway.

    .venv/bin/python bench/proxy.py [--quick] [--no-gpu] [--out bench/results/proxy.json] [--profile-proxy FILE]

Goals (issue): <= 1 ms added p50 latency, and >= 98 % of direct throughput at 64 concurrent
streams. Prints a table and writes bench/results/proxy.json (exit status 1 when a goal is missed).

Processes (the machine may have 2 CPUs only, so nothing that is measured shares a process, an
event loop or a GIL with what measures it):
  * the stand-in for vLLM: `python -m tdxattest.testing.standin`, with a decode-like pace
    (default 64 tokens per completion, 20 ms between tokens = 50 tokens/s per stream);
  * the gateway: `python -m tdxattest gateway --quote-source software-test` (TLS, TEST-PKI quotes)
    in front of the stand-in; with GPU verification on (the default, `--no-gpu` turns it off), its
    `--gpu-collect` is the TEST GPU (`python -m tdxattest.testing.testgpu collect`: a real H100
    report's blocks re-signed over each nonce), so every attestation carries fresh GPU evidence
    whose digest the quote binds;
  * the verifying proxy: `python -m tdxattest proxy` (plain HTTP on loopback, its upstream the
    gateway, pins.json pinning the software TD (and one GPU's VBIOS and driver), the TEST root CA
    and collateral the gateway wrote, a policy file with the TEST GPU root and the report's golden
    measurements, an audit log in the run's temporary directory, default re-attestation interval);
  * this process: the load generator (one asyncio loop, aiohttp client), and the orchestrator.
Every process started is stopped at the end, also on errors, Ctrl-C or SIGTERM (SIGINT, then
SIGKILL after 5 s; children also get PR_SET_PDEATHSIG so they cannot outlive this process).

Paths compared, same load generator, same requests:
  * direct: client -> gateway over TLS (certificate verification off: a plain client of the same
    upstream, as if no proxy existed);
  * proxy:  client -> proxy (plain HTTP, loopback) -> gateway over the proxy's attested TLS.
Both keep connections alive (aiohttp connector limited to the concurrency); the proxy attests each
new upstream connection once, during warm-up, and then reuses it like any keep-alive client.

Phases, in this order:
  1. latency: one client connection, requests strictly one after another, a small non-streaming
     chat completion (max_tokens=1: the stand-in answers without any pacing). Warm-up requests
     first; then blocks of 50 requests alternate direct / proxy so that drift hits both alike.
     Reported: p50/p99 per path and added = proxy - direct (p50 - p50, p99 - p99).
  2. throughput at 1, 16 and 64 concurrent streams: C workers each run streaming chat
     completions back to back (`stream: true`, the stand-in's full 64 tokens). A round is a
     warm-up (every worker has opened its connection, the proxy has attested its upstream ones,
     and every worker has had at least one full stream) followed by a measurement window; tokens
     are the SSE events carrying delta content, counted when they arrive inside the window;
     throughput = tokens / window seconds. Streams still running when the window closes are
     read to their end (not counted) so no connection is cut.
     Rounds alternate direct / proxy (2 rounds each by default). Also reported: time to first
     token (TTFT) p50/p99 of the streams that started inside the window, direct and proxy, and
     CPU seconds used by each process during each path's rounds (from /proc/PID/stat).
  3. attestations per second: in this process, a loop of `UpstreamConnection.open(config)` +
     `attest(appraiser)` + close against the gateway process, i.e. TCP + TLS handshake, a fresh
     32-byte nonce, the gateway making a TEST-PKI quote over it, and the full verification
     (dcap-qvl, collateral, policy, pins, REPORTDATA binding to this connection's SPKI and the
     nonce), with 1 and with 4 attestations in flight. The time spent inside the verification
     (`Appraiser.appraise`) is reported separately. This is the proxy's own code, driven directly
     rather than through requests, so the number is the attestation path and nothing else.

`--quick` is a smoke run of a few seconds (shorter streams and windows, fewer requests); its
numbers are not meant to be compared with the goals. `--profile-proxy FILE` runs the proxy under
cProfile and writes its stats to FILE when the proxy stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import machine as machine_facts  # noqa: E402
from bench.stats import pct  # noqa: E402

RESULT = REPO / "bench" / "results" / "proxy.json"
# The real H100 report the TEST GPU imitates (provenance: tests/fixtures/gpu-evidence/README.md).
FIXTURES = REPO / "tests" / "fixtures" / "gpu-evidence"
GOAL_ADDED_P50_MS = 1.0
GOAL_THROUGHPUT_RATIO = 0.98
GOAL_CONCURRENCY = 64
MODEL = "standin/echo-1"
TOKEN_MARK = b'"delta": {"content": "'  # a stream chunk carrying a token (not the role/finish chunks)


@dataclass
class Params:
    token_interval_ms: float = 20.0
    tokens: int = 64
    concurrency: tuple[int, ...] = (1, 16, 64)
    latency_requests: int = 2000  # per path
    latency_warmup: int = 100  # per path
    window_s: float = 6.0
    rounds: int = 2  # per path and concurrency
    attest_s: float = 4.0  # per attestation concurrency
    attest_concurrency: tuple[int, ...] = (1, 4)
    gpu: bool = True  # the gateway serves fresh GPU evidence and the proxy verifies it

    @classmethod
    def quick(cls) -> Params:
        return cls(
            token_interval_ms=10.0,
            tokens=16,
            latency_requests=200,
            latency_warmup=20,
            window_s=1.0,
            rounds=1,
            attest_s=0.6,
        )


# -- machine --------------------------------------------------------------------------------------


def machine() -> dict:
    import aiohttp
    import httptools

    return machine_facts(aiohttp=aiohttp.__version__, httptools=httptools.__version__)


def cpu_split(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children's are not counted)."""
    try:
        return sum(cpu_split(pid))
    except (OSError, IndexError, ValueError):
        return float("nan")


# -- processes ------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Servers:
    """The subprocesses; `stop()` ends every one of them."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], timeout_s: float = 30.0) -> dict:
        log = open(self.tmp / f"{name}.stderr", "wb")
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        self.procs[name] = proc
        deadline = time.monotonic() + timeout_s
        assert proc.stdout is not None  # started with stdout=PIPE
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                line = proc.stdout.readline()
                if line:
                    return json.loads(line)
            if proc.poll() is not None:
                break
        raise RuntimeError(f"{name} did not start (exit {proc.poll()}):\n{self.log(name)}")

    def log(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.tmp / f"{name}.stderr").read_text(errors="replace")[-4000:]
        return ""

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
        for proc in reversed(list(self.procs.values())):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)
            if proc.stdout:
                proc.stdout.close()
        self.procs.clear()


def start_servers(servers: Servers, p: Params, profile: str | None) -> dict:
    from tdxattest.testing.testpki import TdIdentity

    py = sys.executable
    tmp = servers.tmp
    standin = servers.start(
        "standin",
        [
            py,
            "-m",
            "tdxattest.testing.standin",
            "--listen",
            "127.0.0.1:0",
            "--token-interval-ms",
            str(p.token_interval_ms),
            "--tokens",
            str(p.tokens),
        ],
    )
    pki_dir = tmp / "pki"
    gpu_args: list[str] = []
    if p.gpu:
        from tdxattest.testing.testgpu import TestGpu, save_gpus

        save_gpus([TestGpu.create((FIXTURES / "hopperAttestationReport.txt").read_text())], tmp / "gpu")
        collect = [py, "-m", "tdxattest.testing.testgpu", "collect", "--state", str(tmp / "gpu"), "--nonce", "{nonce}"]
        gpu_args = ["--gpu-collect", json.dumps(collect)]
    gateway = servers.start(
        "gateway",
        [
            py,
            "-m",
            "tdxattest",
            "gateway",
            "--quote-source",
            "software-test",
            "--test-pki-dir",
            str(pki_dir),
            "--upstream",
            standin["listening"],
            "--event-log",
            str(tmp / "no-event-log"),
            "--listen",
            "127.0.0.1:0",
            *gpu_args,
        ],
    )
    pins = tmp / "pins.json"
    stack_pins = TdIdentity().stack_pins()
    policy = tmp / "policy.yaml"
    policy.write_text("{}")
    if p.gpu:
        from dataclasses import replace

        from tdxattest.core.pins import GpuExpectation

        golden = {
            k: v
            for k, v in json.loads((FIXTURES / "hopperAttestationReport-claims.txt").read_text())[
                "measurements"
            ].items()
            if set(v) != {"0"}
        }
        stack_pins = replace(stack_pins, gpu=GpuExpectation(1, ("96.00.9F.00.01",), ("550.90.07",), "on"))
        policy.write_text(json.dumps({"gpu": {"root_ca": str(tmp / "gpu/0/root.pem"), "reference": golden}}))
    pins.write_text(json.dumps(stack_pins.to_json()))
    prof = ["-m", "cProfile", "-o", profile] if profile else []
    proxy = servers.start(
        "proxy",
        [
            py,
            *prof,
            "-m",
            "tdxattest",
            "proxy",
            "--upstream",
            gateway["listening"],
            "--pins",
            str(pins),
            "--policy",
            str(policy),
            "--collateral",
            str(pki_dir / "collateral.json"),
            "--root-ca",
            str(pki_dir / "root-ca.der"),
            "--listen",
            "127.0.0.1:0",
            "--audit",
            str(tmp / "audit.jsonl"),
        ],
    )
    return {
        "standin": standin["listening"],
        "gateway": gateway["listening"],
        "proxy": proxy["listening"],
        "pins": str(pins),
        "policy": str(policy),
        "pki_dir": str(pki_dir),
        "audit": str(tmp / "audit.jsonl"),
    }


# -- statistics -----------------------------------------------------------------------------------


def ms(x: float) -> float:
    return round(x * 1000, 3)


# -- load generator -------------------------------------------------------------------------------

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say OK"}]}


def session(c: int):
    import aiohttp

    # ssl=False: no certificate verification (the direct client of the same upstream); unused for http.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=c, ssl=False, force_close=False),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def small_request(s, url: str) -> tuple[float, bytes]:
    t = time.perf_counter()
    async with s.post(url + "/v1/chat/completions", json={**CHAT, "max_tokens": 1}) as r:
        body = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}: {body[:300]!r}")
    return time.perf_counter() - t, body


async def latency_phase(urls: dict[str, str], p: Params, pids: dict[str, int]) -> dict:
    out: dict[str, list[float]] = {"direct": [], "proxy": []}
    cpu = {k: {n: 0.0 for n in pids} for k in out}
    sessions = {k: session(1) for k in out}
    try:
        answers = {}
        for k in out:
            for _ in range(p.latency_warmup):
                _, answers[k] = await small_request(sessions[k], urls[k])
        a, b = (json.loads(answers[k])["choices"][0]["message"]["content"] for k in ("direct", "proxy"))
        if a != b or not a:
            raise RuntimeError(f"direct and proxy answers differ: {a!r} vs {b!r}")
        block = 50
        while len(out["proxy"]) < p.latency_requests:
            for k in ("direct", "proxy"):
                n = min(block, p.latency_requests - len(out[k]))
                before = {n: cpu_seconds(pid) for n, pid in pids.items()}
                for _ in range(n):
                    dt, _ = await small_request(sessions[k], urls[k])
                    out[k].append(dt)
                for name, pid in pids.items():
                    cpu[k][name] += cpu_seconds(pid) - before[name]
    finally:
        for s in sessions.values():
            await s.close()
    res: dict[str, Any] = {
        k: {
            "n": len(v),
            "p50_ms": ms(pct(v, 50)),
            "p99_ms": ms(pct(v, 99)),
            "mean_ms": ms(sum(v) / len(v)),
            "cpu_us_per_request": {n: round(1e6 * c / len(v), 1) for n, c in cpu[k].items()},
        }
        for k, v in out.items()
    }
    res["added"] = {
        "p50_ms": round(res["proxy"]["p50_ms"] - res["direct"]["p50_ms"], 3),
        "p99_ms": round(res["proxy"]["p99_ms"] - res["direct"]["p99_ms"], 3),
    }
    return res


@dataclass
class Round:
    tokens: int = 0
    all_tokens: int = 0  # also those outside the window (CPU use covers the whole round)
    streams_done: int = 0
    ttft: list[float] = field(default_factory=list)
    # The measurement window: set once every worker has had a full stream (until then, never open).
    t0: float = float("inf")
    t1: float = float("inf")


async def stream_once(s, url: str, rnd: Round) -> int:
    start = time.perf_counter()
    first = None
    n = 0
    async with s.post(url + "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}: {(await r.read())[:300]!r}")
        async for line in r.content:
            if TOKEN_MARK in line:
                now = time.perf_counter()
                n += 1
                if first is None:
                    first = now
                if rnd.t0 <= now < rnd.t1:
                    rnd.tokens += 1
    if first is not None and rnd.t0 <= start < rnd.t1:
        rnd.ttft.append(first - start)
    return n


async def throughput_round(url: str, c: int, p: Params, warm_s: float) -> Round:
    """Warm-up until every worker has had a full stream and at least `warm_s` passed (new upstream
    connections are attested then: with fresh GPU evidence that is one SPDM exchange each, one at a
    time, and its cost is the attestation phase's to report), then the measurement window."""
    rnd = Round()
    s = session(c)
    earliest = time.perf_counter() + warm_s
    warmed = 0

    async def worker() -> None:
        nonlocal warmed
        first = True
        while time.perf_counter() < rnd.t1:
            n = await stream_once(s, url, rnd)
            rnd.all_tokens += n
            if n != p.tokens:
                raise RuntimeError(f"{url}: a stream had {n} tokens, expected {p.tokens}")
            rnd.streams_done += 1
            if first:
                first, warmed = False, warmed + 1
                if warmed == c:  # the last worker's first stream: open the window
                    rnd.t0 = max(time.perf_counter(), earliest)
                    rnd.t1 = rnd.t0 + p.window_s

    try:
        await asyncio.gather(*(worker() for _ in range(c)))
    finally:
        await s.close()
    return rnd


async def throughput_phase(urls: dict[str, str], p: Params, pids: dict[str, int]) -> list[dict]:
    stream_s = (p.tokens - 1) * p.token_interval_ms / 1000
    warm_s = stream_s + 0.3 + 0.01 * max(p.concurrency)  # every worker has one full stream behind it
    rows = []
    for c in p.concurrency:
        per: dict[str, dict[str, Any]] = {
            k: {"tokens": 0, "all_tokens": 0, "window_s": 0.0, "streams": 0, "ttft": [], "cpu": {n: 0.0 for n in pids}}
            for k in ("direct", "proxy")
        }
        for _ in range(p.rounds):
            for k in ("direct", "proxy"):
                before = {n: cpu_seconds(pid) for n, pid in pids.items()}
                rnd = await throughput_round(urls[k], c, p, warm_s)
                after = {n: cpu_seconds(pid) for n, pid in pids.items()}
                agg = per[k]
                agg["tokens"] += rnd.tokens
                agg["all_tokens"] += rnd.all_tokens
                agg["window_s"] += p.window_s
                agg["streams"] += rnd.streams_done
                agg["ttft"] += rnd.ttft
                for n in pids:
                    agg["cpu"][n] += after[n] - before[n]
        row: dict = {"concurrency": c}
        for k, agg in per.items():
            row[k] = {
                "tokens_per_s": round(agg["tokens"] / agg["window_s"], 1),
                "tokens_in_windows": agg["tokens"],
                "tokens_in_rounds": agg["all_tokens"],
                "streams_completed": agg["streams"],
                "ttft_p50_ms": ms(pct(agg["ttft"], 50)),
                "ttft_p99_ms": ms(pct(agg["ttft"], 99)),
                "cpu_s": {n: round(v, 2) for n, v in agg["cpu"].items()},
                "cpu_us_per_token": {n: round(1e6 * v / max(1, agg["all_tokens"]), 1) for n, v in agg["cpu"].items()},
            }
        row["ratio"] = round(row["proxy"]["tokens_per_s"] / row["direct"]["tokens_per_s"], 4)
        row["ttft_added_p50_ms"] = round(row["proxy"]["ttft_p50_ms"] - row["direct"]["ttft_p50_ms"], 3)
        row["ttft_added_p99_ms"] = round(row["proxy"]["ttft_p99_ms"] - row["direct"]["ttft_p99_ms"], 3)
        row["ideal_tokens_per_s"] = round(c * 1000 / p.token_interval_ms, 1)
        rows.append(row)
        print(
            f"  {c:>3} streams: direct {row['direct']['tokens_per_s']:.0f} tok/s, "
            f"proxy {row['proxy']['tokens_per_s']:.0f} tok/s ({row['ratio'] * 100:.1f} %)",
            flush=True,
        )
    return rows


async def attestation_phase(info: dict, p: Params) -> list[dict]:
    from tdxattest.channel.proxy import ProxyConfig, UpstreamConnection
    from tdxattest.core.policy import load_policy, with_pins_json
    from tdxattest.dcap.appraise import Appraiser, FixedCollateral

    config = ProxyConfig(upstream=info["gateway"])

    class TimedAppraiser(Appraiser):
        spent = 0.0

        def appraise(self, quote, now, expected=None):
            t = time.perf_counter()
            try:
                return super().appraise(quote, now, expected)
            finally:
                self.spent += time.perf_counter() - t

    collateral = FixedCollateral.from_file(str(Path(info["pki_dir"]) / "collateral.json"))
    appraiser = TimedAppraiser(
        collateral,
        with_pins_json(load_policy(info["policy"]), info["pins"]),
        (Path(info["pki_dir"]) / "root-ca.der").read_bytes(),
    )

    async def one() -> float:
        t = time.perf_counter()
        conn = await UpstreamConnection.open(config)
        try:
            att = await conn.attest(appraiser)
            assert att.tcb_status and (att.gpu is not None) == p.gpu
        finally:
            conn.close()
        return time.perf_counter() - t

    await one()  # warm-up (imports, collateral parse)
    rows = []
    for c in p.attest_concurrency:
        times: list[float] = []
        appraiser.spent = 0.0
        deadline = time.perf_counter() + p.attest_s

        async def worker(deadline: float, times: list[float]) -> None:
            while time.perf_counter() < deadline:
                times.append(await one())

        start = time.perf_counter()
        await asyncio.gather(*(worker(deadline, times) for _ in range(c)))
        elapsed = time.perf_counter() - start
        rows.append(
            {
                "in_flight": c,
                "attestations": len(times),
                "seconds": round(elapsed, 3),
                "per_s": round(len(times) / elapsed, 1),
                "latency_p50_ms": ms(pct(times, 50)),
                "latency_p99_ms": ms(pct(times, 99)),
                "verification_mean_ms": ms(appraiser.spent / len(times)),
            }
        )
    return rows


# -- report ---------------------------------------------------------------------------------------


def table(doc: dict) -> str:
    lat, p = doc["latency"], doc["parameters"]
    lines: list[str] = [
        f"python {doc['machine']['python']}   {doc['machine']['cpu']} x{doc['machine']['cpus']}   "
        f"aiohttp {doc['machine']['aiohttp']}   httptools {doc['machine']['httptools']}   mode {doc['mode']}",
        f"stand-in: {p['tokens']} tokens/stream, {p['token_interval_ms']} ms between tokens",
    ]
    if lat:
        lines += [
            "",
            f"latency, small chat completion (max_tokens=1), sequential, keep-alive, n={lat['proxy']['n']} per path",
            f"{'':<10} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}   CPU us/request: "
            + " ".join(f"{n:>8}" for n in lat["proxy"]["cpu_us_per_request"]),
        ]
        for k in ("direct", "proxy"):
            lines.append(
                f"{k:<10} {lat[k]['p50_ms']:>8.3f} {lat[k]['p99_ms']:>8.3f} {lat[k]['mean_ms']:>8.3f}"
                + " " * 18
                + " ".join(f"{v:>8.0f}" for v in lat[k]["cpu_us_per_request"].values())
            )
        lines.append(f"{'added':<10} {lat['added']['p50_ms']:>8.3f} {lat['added']['p99_ms']:>8.3f}")
    if doc["throughput"]:
        lines += [
            "",
            "streaming throughput (tokens/s in the window) and time to first token",
            f"{'streams':>7} {'ideal':>7} {'direct':>8} {'proxy':>8} {'ratio':>7}   "
            f"{'TTFT p50 d/p ms':>16} {'TTFT p99 d/p ms':>16}   {'proxy CPU us/tok':>16}",
        ]
    for r in doc["throughput"]:
        d, x = r["direct"], r["proxy"]
        cpu_us = x["cpu_us_per_token"]["proxy"]
        lines.append(
            f"{r['concurrency']:>7} {r['ideal_tokens_per_s']:>7.0f} {d['tokens_per_s']:>8.1f} "
            f"{x['tokens_per_s']:>8.1f} {r['ratio'] * 100:>6.1f}%   "
            f"{d['ttft_p50_ms']:>7.2f}/{x['ttft_p50_ms']:<8.2f} {d['ttft_p99_ms']:>7.2f}/{x['ttft_p99_ms']:<8.2f}"
            f"   {cpu_us:>16.1f}"
        )
    if doc["attestation"]:
        lines += [
            "",
            "attestations (TLS connect + fresh nonce + gateway quote"
            + (" + fresh GPU evidence" if p.get("gpu_verification") else "")
            + " + full verification), proxy code in-process",
            f"{'in flight':>9} {'per s':>7} {'p50 ms':>8} {'p99 ms':>8} {'verify ms':>10}",
        ]
    for r in doc["attestation"]:
        lines.append(
            f"{r['in_flight']:>9} {r['per_s']:>7.1f} {r['latency_p50_ms']:>8.2f} {r['latency_p99_ms']:>8.2f} "
            f"{r['verification_mean_ms']:>10.2f}"
        )
    lines.append("")
    for g in doc["goals"]:
        lines.append(f"goal {g['name']}: {g['goal']}  seen {g['seen']}  {'met' if g['met'] else 'MISSED'}")
    return "\n".join(lines)


def goals(doc: dict) -> list[dict]:
    out = []
    if doc["latency"]:
        added = doc["latency"]["added"]["p50_ms"]
        out.append(
            {
                "name": "added_latency_p50",
                "goal": f"<= {GOAL_ADDED_P50_MS} ms",
                "seen": f"{added:.3f} ms",
                "met": added <= GOAL_ADDED_P50_MS,
            }
        )
    row = next((r for r in doc["throughput"] if r["concurrency"] == GOAL_CONCURRENCY), None)
    if row is not None:
        out.append(
            {
                "name": f"throughput_ratio_at_{GOAL_CONCURRENCY}_streams",
                "goal": f">= {GOAL_THROUGHPUT_RATIO:.0%}",
                "seen": f"{row['ratio']:.2%}",
                "met": row["ratio"] >= GOAL_THROUGHPUT_RATIO,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    ap.add_argument("--out", type=Path, help=f"default {RESULT.relative_to(REPO)} (--quick: print only)")
    ap.add_argument("--profile-proxy", metavar="FILE", help="run the proxy under cProfile, stats to FILE")
    ap.add_argument("--concurrency", help="comma-separated stream counts (default 1,16,64)")
    ap.add_argument("--window", type=float, help="seconds per measurement window")
    ap.add_argument("--rounds", type=int, help="rounds per path and concurrency")
    ap.add_argument(
        "--phases",
        default="latency,throughput,attestation",
        help="comma-separated subset of latency,throughput,attestation (for profiling)",
    )
    ap.add_argument("--no-gpu", action="store_true", help="no GPU evidence: the CPU-only attestation path")
    ap.add_argument("--token-interval-ms", type=float)
    ap.add_argument("--tokens", type=int)
    args = ap.parse_args(argv)
    p = Params.quick() if args.quick else Params()
    if args.concurrency:
        p.concurrency = tuple(int(x) for x in args.concurrency.split(","))
    for name, attr in (
        ("window", "window_s"),
        ("rounds", "rounds"),
        ("token_interval_ms", "token_interval_ms"),
        ("tokens", "tokens"),
    ):
        if getattr(args, name) is not None:
            setattr(p, attr, getattr(args, name))
    p.gpu = not args.no_gpu
    out = args.out or (None if args.quick else RESULT)

    # SIGTERM ends the run like Ctrl-C: the finally below stops every server.
    def on_sigterm(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="tdxattest-bench-") as d:
        servers = Servers(Path(d))
        try:
            info = start_servers(servers, p, args.profile_proxy)
            urls = {"direct": info["gateway"], "proxy": info["proxy"]}
            pids = {n: servers.pid(n) for n in ("standin", "gateway", "proxy")}
            pids["loadgen"] = os.getpid()
            print(
                f"servers up: stand-in {info['standin']}, gateway {info['gateway']}, proxy {info['proxy']}", flush=True
            )

            phases = set(args.phases.split(","))

            async def run() -> dict:
                res: dict = {"latency": None, "throughput": [], "attestation": []}
                if "latency" in phases:
                    print("latency ...", flush=True)
                    res["latency"] = await latency_phase(urls, p, pids)
                if "throughput" in phases:
                    print("throughput ...", flush=True)
                    res["throughput"] = await throughput_phase(urls, p, pids)
                if "attestation" in phases:
                    print("attestations ...", flush=True)
                    res["attestation"] = await attestation_phase(info, p)
                return res

            split0 = {n: cpu_split(pid) for n, pid in pids.items()}
            results = asyncio.run(run())
            split1 = {n: cpu_split(pid) for n, pid in pids.items()}
            results["cpu_s_whole_run"] = {
                n: {"user": round(split1[n][0] - split0[n][0], 2), "system": round(split1[n][1] - split0[n][1], 2)}
                for n in pids
            }
            audit_lines = sum(1 for _ in open(info["audit"], encoding="utf-8"))
        except BaseException:
            for name in list(servers.procs):
                if servers.procs[name].poll() not in (None, 0):
                    print(f"--- {name} stderr ---\n{servers.log(name)}", file=sys.stderr)
            raise
        finally:
            servers.stop()
    doc = {
        "benchmark": "bench/proxy.py",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": "quick" if args.quick else "full",
        "duration_s": round(time.time() - started, 1),
        "machine": machine(),
        "parameters": {
            "token_interval_ms": p.token_interval_ms,
            "tokens": p.tokens,
            "concurrency": list(p.concurrency),
            "latency_requests_per_path": p.latency_requests,
            "latency_warmup_per_path": p.latency_warmup,
            "window_s": p.window_s,
            "rounds_per_path": p.rounds,
            "attestation_seconds": p.attest_s,
            "gpu_verification": p.gpu,
            "processes": "stand-in, gateway, proxy: one process each; load generator: the bench process",
            "proxy_audit_lines": audit_lines,
        },
        **results,
    }
    doc["goals"] = goals(doc)
    doc["all_goals_met"] = all(g["met"] for g in doc["goals"])
    print()
    print(table(doc))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0 if doc["all_goals_met"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        sys.exit(130)
