"""Notifier delivery: deliveries per second and event -> webhook p99, with and without a dead receiver.

The notifier runs as its own process (``python -m services.notifier``) on an embedded nats-server.
Work items (NotificationRequested) are published open-loop at a fixed rate, spread over healthy
receivers; in the "with dead" run a fifth subscription points at a receiver that accepts connections
and never answers (each attempt costs the full webhook timeout until its breaker opens). The figure
that matters is the healthy receivers' p99 with the dead one over their p99 without it (target < 1.5x).

The machine is shared (2 cores), so one pair of runs says little: ``PAIRS`` pairs are run, each on a
fresh server and notifier, alternating which of the two goes first so drift in the background load
falls on both; each pair's ratio is printed, and the median ratio is the result. The receivers keep
connections alive (HTTP/1.1), as production web servers do; ``HAVEN_BENCH_RECEIVER_HTTP=HTTP/1.0``
makes them close each one (a connection per delivery). ``notifier CPU`` is the notifier process's CPU
time per work item (Linux ``/proc``), the cost that decides how much load it can take.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks.pipeline import percentile
from haven.kit import bus, topology
from haven.kit.nats_server import EmbeddedNats, free_port, start_embedded_nats
from haven.kit.topology import ensure_topology
from haven.notification.v1 import notification_pb2
from haven.system import grpc_serving

RATE_PER_SECOND = 200
DURATION_SECONDS = 8
PAIRS = 4  # about 90 s in all for `make bench`
# The receivers' HTTP version: HTTP/1.1 keeps connections alive, as production web servers do;
# HAVEN_BENCH_RECEIVER_HTTP=HTTP/1.0 makes the notifier open a connection per delivery (the old setup).
RECEIVER_HTTP = os.environ.get("HAVEN_BENCH_RECEIVER_HTTP", "HTTP/1.1")
HEALTHY_RECEIVERS = 4
WEBHOOK_TIMEOUT_SECONDS = 2.0
SECRET = "bench-secret-" + "x" * 32


class _Arrivals(ThreadingHTTPServer):
    """A receiver recording, per notification, the seconds from publish to arrival."""

    def __init__(self) -> None:
        self.latency: dict[str, float] = {}
        self.lock = threading.Lock()
        arrivals = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = RECEIVER_HTTP

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                sent = float(json.loads(body)["sent"])
                with arrivals.lock:
                    arrivals.latency.setdefault(self.headers["x-haven-notification-id"], time.time() - sent)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        """Return the receiver's URL."""
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


def _black_hole() -> tuple[socket.socket, str]:
    """Return a listening socket that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}/dead"


def _cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) a process has used so far, or 0 where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5), i.e. 12 and 13 after the ")" of the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_notifier(nats: EmbeddedNats, data_dir: Path) -> subprocess.Popen[bytes]:
    port = free_port()
    env = {
        **os.environ,
        "HAVEN_NATS_URL": nats.url,
        "HAVEN_DATA_DIR": str(data_dir),
        "HAVEN_NOTIFIER_GRPC_PORT": str(port),
        "HAVEN_WEBHOOK_TIMEOUT_SECONDS": str(WEBHOOK_TIMEOUT_SECONDS),
        "HAVEN_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "services.notifier"], env=env)
    deadline = time.monotonic() + 30
    while not grpc_serving(f"127.0.0.1:{port}"):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("notifier did not start")
        time.sleep(0.1)
    return process


async def _run(nats: EmbeddedNats, endpoints: list[str], rate: int, seconds: int) -> int:
    """Publish work items round-robin over ``endpoints`` at ``rate`` per second; return how many."""
    nc = await bus.connect(nats.url, "bench-notifier")
    js = nc.jetstream()
    await ensure_topology(js)
    secrets = await js.key_value(topology.BUCKET_SUBSCRIPTIONS)
    subscription_ids = []
    for endpoint in endpoints:
        subscription_id = str(uuid.uuid4())
        record = {"secret": SECRET, "organisation_id": "bench", "endpoint": endpoint, "topic": "bench"}
        await secrets.put(subscription_id, json.dumps(record).encode())
        subscription_ids.append(subscription_id)
    total = rate * seconds
    start = time.monotonic()
    for n in range(total):
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        message = notification_pb2.NotificationRequested(
            event_id=str(uuid.uuid4()),
            referral_id=str(uuid.uuid4()),
            notification_id=str(uuid.uuid4()),
            recipient_organisation_id="bench",
            subscription_id=subscription_ids[n % len(subscription_ids)],
            channel=notification_pb2.CHANNEL_REST_HOOK,
            event_type="referral-routed",
            payload_json=json.dumps({"sent": time.time()}).encode(),
        )
        message.occurred_at.FromDatetime(datetime.now(UTC))
        await bus.publish_event(js, topology.NOTIFICATION_REQUESTED, message, msg_id=message.event_id)
    await nc.drain()
    return total


def measure(
    with_dead: bool, rate: int = RATE_PER_SECOND, seconds: int = DURATION_SECONDS
) -> dict[str, float]:
    """Run once on a fresh server and notifier; return the healthy receivers' figures."""
    with tempfile.TemporaryDirectory() as tmp:
        nats = start_embedded_nats(Path(tmp) / "nats", port=free_port())
        receivers = [_Arrivals() for _ in range(HEALTHY_RECEIVERS)]
        hole, dead_url = _black_hole()
        notifier = _start_notifier(nats, Path(tmp))
        try:
            endpoints = [r.url for r in receivers] + ([dead_url] if with_dead else [])
            cpu_before = _cpu_seconds(notifier.pid)
            started = time.monotonic()
            # The healthy receivers get the same load in both runs; the dead one's items come on top.
            total_rate = rate * len(endpoints) // HEALTHY_RECEIVERS
            sent = asyncio.run(_run(nats, endpoints, total_rate, seconds))
            expected = sent * HEALTHY_RECEIVERS // len(endpoints)
            deadline = time.monotonic() + 30
            while sum(len(r.latency) for r in receivers) < expected and time.monotonic() < deadline:
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            cpu = _cpu_seconds(notifier.pid) - cpu_before
            latencies = [v for r in receivers for v in r.latency.values()]
        finally:
            notifier.terminate()
            notifier.wait(30)
            for r in receivers:
                r.shutdown()
            hole.close()
            nats.stop()
    return {
        "expected": expected,
        "delivered": len(latencies),
        "deliveries_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        # Over every item the notifier handled in the run (the dead receiver's too).
        "notifier_cpu_ms_per_item": cpu * 1000 / max(1, sent),
    }


def _line(name: str, f: dict[str, float]) -> str:
    return (
        f"    {name:<12} {f['deliveries_per_s']:6.1f} deliveries/s  p50 {f['p50_ms']:7.1f} ms  "
        f"p99 {f['p99_ms']:7.1f} ms  notifier CPU {f['notifier_cpu_ms_per_item']:4.1f} ms/item  "
        f"({f['delivered']:.0f}/{f['expected']:.0f} delivered)"
    )


def main(rate: int = RATE_PER_SECOND, seconds: int = DURATION_SECONDS, pairs: int = PAIRS) -> dict[str, Any]:
    """Measure the healthy receivers without and with a dead one, ``pairs`` times; print each ratio."""
    print(
        f"notifier: work item -> webhook, {rate}/s for {seconds} s over {HEALTHY_RECEIVERS} healthy "
        f"{RECEIVER_HTTP} receivers; {pairs} pairs of runs (healthy only / + 1 dead receiver), "
        "fresh server each run"
    )
    runs: list[dict[str, Any]] = []
    for n in range(pairs):
        # Alternate the order, so a change in the background load does not always hit the same run.
        order = (False, True) if n % 2 == 0 else (True, False)
        figures = {with_dead: measure(with_dead, rate, seconds) for with_dead in order}
        alone, beside_dead = figures[False], figures[True]
        ratio = beside_dead["p99_ms"] / alone["p99_ms"]
        print(f"  pair {n + 1}: healthy p99 with / without the dead receiver {ratio:.2f}x")
        print(_line("healthy only", alone))
        print(_line("+ dead", beside_dead))
        runs.append({"healthy_only": alone, "with_dead": beside_dead, "p99_ratio": ratio})
    ratio = statistics.median(r["p99_ratio"] for r in runs)
    for name, key in (("healthy only", "healthy_only"), ("+ dead", "with_dead")):
        print(
            f"  median {name:<12} {statistics.median(r[key]['deliveries_per_s'] for r in runs):6.1f} "
            f"deliveries/s  p50 {statistics.median(r[key]['p50_ms'] for r in runs):7.1f} ms  "
            f"p99 {statistics.median(r[key]['p99_ms'] for r in runs):7.1f} ms"
        )
    each = ", ".join(f"{r['p99_ratio']:.2f}" for r in runs)
    print(
        f"  median healthy p99 ratio with / without the dead receiver: {ratio:.2f}x "
        f"(pairs: {each})   target < 1.5x -> "
        f"{'met' if ratio < 1.5 else 'NOT met'}"
    )
    return {"runs": runs, "p99_ratio": ratio}


if __name__ == "__main__":
    main()
