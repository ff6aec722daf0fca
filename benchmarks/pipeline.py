"""POST -> partner webhook latency of the whole system, against raw JetStream hops as the baseline.

The system is started as ``make up`` starts it (separate processes, embedded nats-server). Referrals
are posted open-loop at a fixed rate for a fixed time; the latency of each is the time from sending
the POST to the Local Authority's webhook receiving its routing outcome. The baseline, measured in the
same run on the same machine, sends the same number of messages through the same number of JetStream
hops (publish -> durable pull consumer -> publish ...) with nats-py and no work.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from benchmarks.gateway import referral_bodies
from haven.kit import bus
from haven.kit.nats_server import free_port, start_embedded_nats
from haven.system import HavenSystem, SystemConfig

RATE_PER_SECOND = 50
DURATION_SECONDS = 20
PIPELINE_HOPS = 4  # referral.received, eligibility.assessed, routing.routed, notification.requested


def percentile(values: list[float], share: float) -> float:
    """Return the value below which ``share`` of the values fall (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def summary(latencies: list[float], sent: int, elapsed: float) -> dict[str, float]:
    """Return p50/p95/p99 in milliseconds and the throughput."""
    return {
        "sent": sent,
        "completed": len(latencies),
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "throughput_per_s": len(latencies) / elapsed,
    }


class _Arrivals:
    """A webhook receiver recording when each referral's routing outcome arrived.

    Each referral also raises `referral-received` straight from the gateway's event; only
    `referral-routed` has been through eligibility and the router, so only it is timed.
    """

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        arrivals = self

        class Handler(BaseHTTPRequestHandler):
            # Keeps connections alive, as an LA platform's web server does (HTTP/1.0 would make the
            # notifier open a connection per delivery, a cost no real receiver imposes).
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("x-haven-event-type") == "referral-routed":
                    arrivals.at.setdefault(json.loads(body)["referral_id"], time.perf_counter())
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


async def _post_at_rate(
    base: str, headers: dict[str, str], bodies: list[bytes], rate: int, seconds: int
) -> dict[str, float]:
    sent_at: dict[str, float] = {}
    failures: dict[int, int] = {}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:

        async def post_one(planned: float, body: bytes) -> None:
            await asyncio.sleep(max(0.0, planned - time.perf_counter()))
            start = time.perf_counter()
            answer = await client.post(base, content=body, headers=headers)
            if answer.status_code == 201:
                sent_at[answer.headers["location"].split("/")[1]] = start
            else:
                failures[answer.status_code] = failures.get(answer.status_code, 0) + 1

        begin = time.perf_counter() + 0.5
        await asyncio.gather(*(post_one(begin + i / rate, bodies[i]) for i in range(rate * seconds)))
    if failures:
        print(f"  POST failures by status: {failures}")
    return sent_at


def measure_pipeline(rate: int = RATE_PER_SECOND, seconds: int = DURATION_SECONDS) -> dict[str, float]:
    """Start the system, post at ``rate`` for ``seconds``, and return the latency summary."""
    from tests.support.client import subscription, token

    with tempfile.TemporaryDirectory() as scratch:
        config = SystemConfig.with_free_ports(
            Path(scratch), log_dir=Path(scratch) / "logs", extra_env={"HAVEN_LOG_LEVEL": "WARNING"}
        )
        system = HavenSystem(config)
        arrivals = _Arrivals()
        try:
            system.start()
            data_dir = config.data_dir
            la = {
                "Authorization": f"Bearer {token(data_dir, 'demo-la-manchester', 'la-platform')}",
                "Content-Type": "application/fhir+json",
            }
            httpx.post(
                f"{config.gateway_url}/Subscription", headers=la, json=subscription(arrivals.url)
            ).raise_for_status()
            police = {
                "Authorization": f"Bearer {token(data_dir, 'demo-police', 'referrer')}",
                "Content-Type": "application/fhir+json",
            }
            # Distinct children, as on a real night: one child posted a thousand times would make every
            # referral a possible duplicate of all the others.
            bodies = referral_bodies(rate * seconds + 20)
            for body in bodies[-20:]:  # warm up every process before measuring
                httpx.post(config.gateway_url, content=body, headers=police).raise_for_status()
            time.sleep(1)
            arrivals.at.clear()
            started = time.perf_counter()
            sent_at = asyncio.run(_post_at_rate(config.gateway_url, police, bodies, rate, seconds))
            deadline = time.perf_counter() + 30
            while time.perf_counter() < deadline and not set(sent_at) <= set(arrivals.at):
                time.sleep(0.05)
            elapsed = max(arrivals.at.values(), default=started) - started
            latencies = [arrivals.at[r] - t for r, t in sent_at.items() if r in arrivals.at]
            return summary(latencies, rate * seconds, elapsed)
        finally:
            system.stop()
            arrivals.server.shutdown()


async def _raw_hops(url: str, rate: int, seconds: int, hops: int) -> tuple[list[float], float]:
    nc = await bus.connect(url, "bench-baseline")
    js = nc.jetstream()
    subjects = [f"bench.hop{i}" for i in range(hops + 1)]
    for i in range(hops):
        await js.add_stream(
            StreamConfig(name=f"BENCH_HOP{i}", subjects=[subjects[i]], storage=StorageType.FILE)
        )
        await js.add_consumer(
            f"BENCH_HOP{i}", ConsumerConfig(durable_name=f"hop{i}", ack_policy=AckPolicy.EXPLICIT)
        )
    arrived: dict[str, float] = {}
    sent: dict[str, float] = {}
    done = asyncio.Event()

    async def relay(i: int) -> None:
        sub = await js.pull_subscribe_bind(f"hop{i}", f"BENCH_HOP{i}")
        while not done.is_set():
            try:
                messages = await sub.fetch(32, timeout=0.5)
            except Exception:
                continue
            for msg in messages:
                if i + 1 < hops:
                    await js.publish(
                        subjects[i + 1], msg.data, headers={"Nats-Msg-Id": f"{msg.data.decode()}-{i}"}
                    )
                else:
                    arrived[msg.data.decode()] = time.perf_counter()
                await msg.ack()
        await sub.unsubscribe()

    relays = [asyncio.create_task(relay(i)) for i in range(hops)]
    begin = time.perf_counter() + 0.2

    async def send(n: int) -> None:
        await asyncio.sleep(max(0.0, begin + n / rate - time.perf_counter()))
        sent[str(n)] = time.perf_counter()
        await js.publish(subjects[0], str(n).encode(), headers={"Nats-Msg-Id": f"{n}-start"})

    await asyncio.gather(*(send(n) for n in range(rate * seconds)))
    deadline = time.perf_counter() + 20
    while len(arrived) < len(sent) and time.perf_counter() < deadline:
        await asyncio.sleep(0.02)
    done.set()
    await asyncio.gather(*relays)
    await nc.drain()
    elapsed = max(arrived.values(), default=begin) - begin
    return [arrived[k] - sent[k] for k in sent if k in arrived], elapsed


def measure_baseline(rate: int = RATE_PER_SECOND, seconds: int = DURATION_SECONDS) -> dict[str, float]:
    """Send the same load through the same number of raw JetStream hops, doing no work."""
    with tempfile.TemporaryDirectory() as scratch:
        server = start_embedded_nats(Path(scratch), port=free_port())
        try:
            latencies, elapsed = asyncio.run(_raw_hops(server.url, rate, seconds, PIPELINE_HOPS))
        finally:
            server.stop()
    return summary(latencies, rate * seconds, elapsed)


def main(rate: int = RATE_PER_SECOND, seconds: int = DURATION_SECONDS) -> dict[str, Any]:
    """Measure both and print them with their ratio."""
    print(f"pipeline: POST -> LA webhook, {rate} referrals/s for {seconds} s (open loop)")
    pipeline = measure_pipeline(rate, seconds)
    baseline = measure_baseline(rate, seconds)
    for name, figures in (("haven", pipeline), (f"baseline ({PIPELINE_HOPS} raw JetStream hops)", baseline)):
        print(
            f"  {name:<36} p50 {figures['p50_ms']:7.1f} ms  p95 {figures['p95_ms']:7.1f} ms  "
            f"p99 {figures['p99_ms']:7.1f} ms  {figures['throughput_per_s']:6.1f}/s  "
            f"({figures['completed']}/{figures['sent']} completed)"
        )
    ratio = pipeline["p99_ms"] / baseline["p99_ms"]
    print(
        f"  p99 ratio haven / baseline: {ratio:.1f}x   target: haven p99 < 50 ms -> "
        f"{'met' if pipeline['p99_ms'] < 50 else 'NOT met'}"
    )
    return {"pipeline": pipeline, "baseline": baseline, "p99_ratio": ratio}


if __name__ == "__main__":
    main()
