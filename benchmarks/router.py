"""Routing decisions per second with capacity reservation, and the cost of the last-bed race.

Against a real nats-server started here, with router processes started as production starts them
(``python -m services.referral_router``). Each phase stores the assessments (as the eligibility service
does) before the timing, then publishes the EligibilityAssessed events in one burst to the routers,
which are running; the rate is referrals routed (each a plan, a compare-and-set reservation, the stored
Tasks and the published ReferralRouted) divided by the time from the first outcome received to the
last. The load generator thus takes no CPU from the routers while they are timed (the machine has two
cores, shared with nats-server).

- uncontended, 1 process: every referral takes a place at a service with plenty of places.
- uncontended, 3 processes: the same, three routers sharing the durable consumer.
- last bed, 3 processes: every referral is an emergency wanting the one free bed; one gets it, the
  others lose the compare-and-set or find no place and get the fallback (and join the waiting list).

The contention cost is the last-bed rate as a ratio to the uncontended rate with the same processes.

CPU per routing: the CPU time the router process (and nats-server) used from the burst to the last
outcome, over the referrals routed (read from /proc: Linux only, else left out). The wall-clock rate
follows the CPU the machine leaves the router (two cores shared with nats-server and whatever else
runs); ``routings_per_cpu_second_1_process`` is the rate one process reaches with a core to
itself, the figure to hold against the target on a loaded machine.

Baseline, measured in the same run on its own nats-server: the JetStream work a routing does without
the router, a bare client making the same acknowledged writes per referral in the same steps (sequence
claim; free count; reservation record and expiry schedule; decision; Task and its three index keys;
the ReferralRouted publish: 10 writes in 6 steps) with as many referrals in flight as a router's lanes.
``router_to_baseline_1_process`` is the router's rate as a share of it.

- latency, 1 process: referrals published open-loop at 50/s (the pipeline benchmark's rate); the
  router's share of the POST -> webhook path is the time from publishing an assessment to receiving
  its ReferralRouted (p50/p99).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from haven.eligibility.v1 import eligibility_pb2
from haven.kit import bus, topology
from haven.kit.batch import KvWrite, write_all
from haven.kit.ids import new_id
from haven.kit.nats_server import free_port, start_embedded_nats
from haven.referral.v1 import referral_pb2
from haven.routing.v1 import routing_pb2
from services.referral_router.settings import RouterSettings
from services.referral_router.testing import assessed, publish_assessed, start_router_process

REFERRALS = 2000
LATENCY_RATE_PER_SECOND = 50
LATENCY_REFERRALS = 300
TARGET_PER_PROCESS = 1000.0
LONDON = "E09000001"
HOME = "unseen-cssw-home"
# Referrals in flight in the baseline: as many as one router's lanes.
BASELINE_IN_FLIGHT = RouterSettings.model_fields["router_concurrency"].default


@dataclass(frozen=True)
class _PhaseResult:
    """One phase: referrals routed per second, and CPU milliseconds per referral (None off Linux)."""

    rate: float
    router_cpu_ms: float | None
    server_cpu_ms: float | None


def _cpu_seconds(pid: int) -> float | None:
    """Return the CPU time (user + system) a process has used so far; None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _per_referral_ms(before: list[float | None], after: list[float | None]) -> float | None:
    """Return the CPU the processes used between two readings, in milliseconds per referral."""
    if any(b is None for b in before) or any(a is None for a in after):
        return None
    used = sum(a for a in after if a is not None) - sum(b for b in before if b is not None)
    return round(1000 * used / REFERRALS, 3)


async def _store_assessments(js: JetStreamContext, events: list[eligibility_pb2.EligibilityAssessed]) -> None:
    """Store every assessment in KV, as the eligibility service does before it publishes (not timed)."""
    for chunk in range(0, len(events), 500):
        await write_all(
            js,
            [
                KvWrite(topology.BUCKET_ASSESSMENTS, e.referral_id, e.SerializeToString())
                for e in events[chunk : chunk + 500]
            ],
        )


async def _publish_burst(js: JetStreamContext, events: list[eligibility_pb2.EligibilityAssessed]) -> None:
    """Publish every EligibilityAssessed at once (with its message id), waiting for all the acks."""
    for chunk in range(0, len(events), 500):
        acks = [
            await js.publish_async(
                topology.ELIGIBILITY_ASSESSED, e.SerializeToString(), headers={"Nats-Msg-Id": e.event_id}
            )
            for e in events[chunk : chunk + 500]
        ]
        await asyncio.wait_for(asyncio.gather(*acks), 30)


async def _phase(workdir: Path, name: str, processes: int, contended: bool) -> _PhaseResult:
    """Return referrals routed per second, and the CPU it took, in one phase with its own nats-server."""
    server = start_embedded_nats(workdir / name / "nats", port=free_port())
    routers = []
    try:
        nc = await bus.connect(server.url, f"bench-{name}")
        js = nc.jetstream()
        await topology.ensure_topology(js)
        capacity = await js.key_value(topology.BUCKET_CAPACITY)
        # Seeded before the routers start, which keep a live count: plenty of places, or one bed.
        await capacity.put("free.afruca-therapy", str(10 * REFERRALS).encode())
        await capacity.put(f"free.{HOME}", b"1")
        if contended:
            events = [
                assessed(
                    "E08000003",
                    ["unseen-specialist-accommodation"],
                    asked=referral_pb2.SERVICE_ASKED_SPECIALIST_ACCOMMODATION,
                    urgency=referral_pb2.URGENCY_EMERGENCY,
                )
                for _ in range(REFERRALS)
            ]
        else:
            events = [
                assessed(LONDON, ["afruca"], asked=referral_pb2.SERVICE_ASKED_THERAPEUTIC_SUPPORT)
                for _ in range(REFERRALS)
            ]
        await _store_assessments(js, events)
        for index in range(processes):
            log_file = workdir / name / f"router-{index}.log"
            routers.append(
                await asyncio.to_thread(start_router_process, server.url, workdir / name, log_file)
            )
        arrived: dict[str, float] = {}

        async def on_routed(msg: Any) -> None:
            referral_id = routing_pb2.ReferralRouted.FromString(msg.data).referral_id
            arrived.setdefault(referral_id, time.perf_counter())

        subscription = await nc.subscribe(f"{topology.ROUTING_ROUTED_PREFIX}.>", cb=on_routed)
        routers_before = [_cpu_seconds(p.pid) for p in routers]
        server_before = _cpu_seconds(server.process.pid)
        await _publish_burst(js, events)
        async with asyncio.timeout(300):
            while len(arrived) < REFERRALS:
                await asyncio.sleep(0.05)
        routers_after = [_cpu_seconds(p.pid) for p in routers]
        server_after = _cpu_seconds(server.process.pid)
        await subscription.unsubscribe()
        await nc.drain()
        return _PhaseResult(
            rate=(REFERRALS - 1) / (max(arrived.values()) - min(arrived.values())),
            router_cpu_ms=_per_referral_ms(routers_before, routers_after),
            server_cpu_ms=_per_referral_ms([server_before], [server_after]),
        )
    finally:
        for process in routers:
            process.terminate()
        for process in routers:
            process.wait(20)
        server.stop()


async def _baseline(workdir: Path) -> tuple[float, float]:
    """Return referrals per second a bare client makes a routing's JetStream writes at, and its CPU.

    The CPU is this process's, in milliseconds per referral: the client side of the same writes,
    without a router's work around them.
    """
    server = start_embedded_nats(workdir / "baseline" / "nats", port=free_port())
    try:
        nc = await bus.connect(server.url, "bench-baseline")
        js = nc.jetstream()
        await topology.ensure_topology(js)
        value = b"x" * 600  # about a Task resource
        queue: asyncio.Queue[str] = asyncio.Queue()
        for _ in range(REFERRALS):
            queue.put_nowait(new_id())

        async def one(referral: str) -> None:
            task = new_id()
            routing, capacity, resources, index = (
                topology.BUCKET_ROUTING,
                topology.BUCKET_CAPACITY,
                topology.BUCKET_RESOURCES,
                topology.BUCKET_INDEX,
            )
            await write_all(js, [KvWrite(routing, f"sequence.{referral}", b"1", create=True)])
            await write_all(js, [KvWrite(capacity, f"bench.{referral}", b"9")])
            await write_all(
                js,
                [
                    KvWrite(capacity, f"reservation.{task}", b"{}", create=True),
                    KvWrite(capacity, f"bench-schedule.{task}", task.encode()),
                ],
            )
            await write_all(js, [KvWrite(routing, f"outcome.{referral}.bench", value[:300])])
            await write_all(
                js,
                [
                    KvWrite(resources, f"Task.{task}", value, create=True),
                    KvWrite(index, f"Task.based-on.ServiceRequest_{referral}.{task}", b""),
                    KvWrite(index, f"Task.local-authority.{LONDON}.{task}", b""),
                    KvWrite(index, f"Task.owner.Organization_afruca.{task}", b""),
                ],
            )
            await bus.publish_event(
                js,
                topology.routed_subject(LONDON),
                routing_pb2.ReferralRouted(referral_id=referral),
                msg_id=task,
            )

        async def worker() -> None:
            while not queue.empty():
                await one(queue.get_nowait())

        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(BASELINE_IN_FLIGHT)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        await nc.drain()
        return REFERRALS / elapsed, round(1000 * cpu / REFERRALS, 3)
    finally:
        server.stop()


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


async def _latency(workdir: Path) -> dict[str, float]:
    """Publish assessments at a fixed rate to one router; return p50/p99 publish -> routed in ms."""
    server = start_embedded_nats(workdir / "latency" / "nats", port=free_port())
    router = None
    try:
        nc = await bus.connect(server.url, "bench-latency")
        await topology.ensure_topology(nc.jetstream())
        router = await asyncio.to_thread(
            start_router_process, server.url, workdir / "latency", workdir / "latency" / "router.log"
        )
        sent: dict[str, float] = {}
        arrived: dict[str, float] = {}

        async def on_routed(msg: Any) -> None:
            referral_id = routing_pb2.ReferralRouted.FromString(msg.data).referral_id
            arrived.setdefault(referral_id, time.perf_counter())

        subscription = await nc.subscribe(f"{topology.ROUTING_ROUTED_PREFIX}.>", cb=on_routed)
        started = time.perf_counter()
        for index in range(LATENCY_REFERRALS):
            await asyncio.sleep(max(0.0, started + index / LATENCY_RATE_PER_SECOND - time.perf_counter()))
            event = assessed(LONDON, ["afruca"], asked=referral_pb2.SERVICE_ASKED_THERAPEUTIC_SUPPORT)
            sent[event.referral_id] = time.perf_counter()
            await publish_assessed(nc, event)
        async with asyncio.timeout(60):
            while len(arrived) < LATENCY_REFERRALS:
                await asyncio.sleep(0.05)
        await subscription.unsubscribe()
        await nc.drain()
        latencies = [arrived[r] - sent[r] for r in sent]
        return {
            "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
            "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
        }
    finally:
        if router is not None:
            router.terminate()
            router.wait(20)
        server.stop()


async def _measure() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        baseline, baseline_cpu = await _baseline(Path(workdir))
        one = await _phase(Path(workdir), "uncontended-1", 1, contended=False)
        three = await _phase(Path(workdir), "uncontended-3", 3, contended=False)
        race = await _phase(Path(workdir), "last-bed-3", 3, contended=True)
        latency = await _latency(Path(workdir))
    return {
        "referrals_per_phase": REFERRALS,
        "baseline_bare_writes_per_s": round(baseline, 1),
        "baseline_client_cpu_ms_per_referral": baseline_cpu,
        "routing_per_s_1_process": round(one.rate, 1),
        "router_to_baseline_1_process": round(one.rate / baseline, 3),
        "router_cpu_ms_per_routing_1_process": one.router_cpu_ms,
        "server_cpu_ms_per_routing_1_process": one.server_cpu_ms,
        "routings_per_cpu_second_1_process": (
            round(1000 / one.router_cpu_ms, 1) if one.router_cpu_ms else None
        ),
        "routing_per_s_3_processes": round(three.rate, 1),
        "router_cpu_ms_per_routing_3_processes": three.router_cpu_ms,
        "last_bed_routing_per_s_3_processes": round(race.rate, 1),
        "contention_ratio": round(race.rate / three.rate, 3),
        "target_per_process": TARGET_PER_PROCESS,
        "meets_target": one.rate >= TARGET_PER_PROCESS,
        "latency_at_50_per_s_p50_ms": latency["p50_ms"],
        "latency_at_50_per_s_p99_ms": latency["p99_ms"],
    }


def main() -> dict[str, Any]:
    """Run the router benchmark, print the figures and return them."""
    figures = asyncio.run(_measure())
    print("router benchmark (routing decisions with capacity reservation, real nats-server)")
    for key, value in figures.items():
        print(f"  {key:38} {value}")
    return figures


if __name__ == "__main__":
    main()
