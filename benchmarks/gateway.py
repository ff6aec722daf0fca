"""Benchmark of referral intake: the full ``POST /fhir`` against a bare FastAPI endpoint, same run.

Each server runs in its own process under uvicorn (one worker, httptools on uvloop, as the service
runs); the load comes from CLIENT_PROCESSES separate processes speaking raw HTTP/1.1 over keep-alive
connections (a few microseconds of client CPU per request, so the load generator can outrun both
servers and the ratio is the servers' own).
1. At fixed arrival rates (open loop: a request starts on schedule whatever the answers), the p50
   and p99 latency of the 201, for the gateway (token check, FHIR validation, KV writes, JetStream
   publish, audit) and for a bare endpoint that only parses the JSON body. The ratio is the cost of
   the gateway's work. A third server, the floor, does only the least any full POST must (the
   gateway's own token check, body read and profile validation, then one acknowledged JetStream
   publish of the resources): its ratio is the lowest the gateway could reach on this machine, and
   the gateway's p99 against the floor's is what Haven's own writes (resources, facts, match keys,
   announcement, index, audit) and its intake record add. The client processes share one schedule,
   each taking its turn, so requests arrive evenly spaced at the rate (until November 2026 each
   process started its own schedule at the same moment, so "100/s" arrived as 50 pairs a second, the
   second of each pair queued behind the first); each process opens its connections before the
   clock starts.
   The gateway is also measured at KEYED_RATE with an ``X-Request-ID`` on every request, as a
   referrer that retries safely sends (the key is claimed before, and answered after, the intake).
2. Accepted referrals per second with 32 requests in flight (closed loop), and at each fixed rate.
3. CPU per accepted referral during the closed loop, of the server process and of nats-server: the
   figure that moves least when other work shares the machine (latencies and rates move a lot). Also
   the server's CPU per request at each fixed rate: paced requests each find the process idle, its
   caches cold, and cost more than in the closed loop.
The bodies are police referrals of distinct children (sex and date of birth differ), as a real night
is, and no body is sent twice in a run: each phase takes children not referred before (``_Children``).
(Until November 2026 every phase restarted at the same bodies, so from the second phase on each
referral was a possible duplicate of earlier ones: Flags and compare-and-set on every request.)
The gateway writes to a real ``nats-server -js`` in a temporary folder; no other service runs.
Run: ``python -m benchmarks.gateway``, or call ``main()`` (it returns the figures).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from multiprocessing import Pool
from multiprocessing.pool import Pool as ProcessPool
from pathlib import Path

import httpx
import orjson
import uvicorn
import uvloop
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from nats.aio.client import Client as NatsClient

RATES = (100, 300)
# The rate of the gateway's phase with an X-Request-ID on every request.
KEYED_RATE = 100
# Long enough for the p99 to rest on several hundred answers at the lower rate.
SECONDS_PER_RATE = 6.0
THROUGHPUT_SECONDS = 4.0
IN_FLIGHT = 32
# Connections each client process opens before an open-loop phase (more only if all are busy).
_OPEN_LOOP_CONNECTIONS = 4
# Time for the client processes to start and connect before their shared schedule begins.
_SCHEDULE_LEAD_SECONDS = 0.5
# Load generators: separate processes, so the client's own CPU is not what limits the comparison.
CLIENT_PROCESSES = 2
ROOT = Path(__file__).resolve().parents[1]


def _bare_app() -> FastAPI:
    """Return a FastAPI app whose one endpoint parses the JSON body and answers 201."""
    app = FastAPI()

    @app.post("/fhir")
    async def parse_only(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"resourceType": body.get("resourceType")}, status_code=201)

    return app


# The floor's one stream, in the benchmark's own nats-server: none of Haven's streams is written.
FLOOR_STREAM = "BENCH_FLOOR"
_FLOOR_SUBJECT = "bench.floor.referral"


async def floor_app(nc: NatsClient) -> FastAPI:
    """Return an app doing only what any full ``POST /fhir`` must, with the gateway's own code.

    The token check, the body read and the profile's validation (fhir.resources models and Haven's
    checks) of ``referrals.post_transaction``, then one acknowledged JetStream publish of the
    resources it would store, to a stream of its own. Nothing else: no intake record, facts, match
    keys, announcement, index or audit, and no middleware. Haven's topology must exist (the gateway's
    state is built as ``in_process_app`` builds it). Bad credentials and bad bodies get the gateway's
    own answers (401, 403, 400 with an OperationOutcome), so the floor is checked as the gateway is.
    """
    from haven.organisations import Role
    from services.gateway.auth import authenticated, require_role
    from services.gateway.body import read_json_body
    from services.gateway.errors import ApiError, handle_api_error, handle_input_error
    from services.gateway.fhir import FhirInputError, ReferrerContext, parse_referral_bundle
    from services.gateway.testing import in_process_app

    await nc.jetstream().add_stream(name=FLOOR_STREAM, subjects=[_FLOOR_SUBJECT])
    app = FastAPI()
    app.state.haven = (await in_process_app(nc)).state.haven
    app.add_exception_handler(ApiError, handle_api_error)
    app.add_exception_handler(FhirInputError, handle_input_error)

    @app.post("/fhir")
    async def least(request: Request) -> JSONResponse:
        state, principal = await authenticated(request)
        require_role(principal, Role.REFERRER)
        body = await read_json_body(request, state.settings.max_body_bytes)
        referrer = ReferrerContext(principal.organisation_id, principal.referrer_kind or "other")
        parsed = parse_referral_bundle(body, referrer=referrer, today=state.clock().date())
        await state.js.publish(_FLOOR_SUBJECT, orjson.dumps(parsed.resources), stream=FLOOR_STREAM)
        return JSONResponse({"resourceType": "Bundle", "id": parsed.referral_id}, status_code=201)

    return app


def _serve(kind: str, port: int, nats_url: str) -> None:
    """Run one server in this process until killed (``kind`` is "gateway", "floor" or "bare")."""
    # Both on the same stack as the service (services/gateway/service.py): uvloop and httptools.
    if kind == "bare":
        uvicorn.run(
            _bare_app(), host="127.0.0.1", port=port, log_level="warning", loop="uvloop", http="httptools"
        )
        return

    from haven.kit import bus
    from haven.kit.lifecycle import tune_garbage_collector
    from haven.kit.topology import ensure_topology
    from services.gateway.testing import in_process_app

    async def run() -> None:
        nc = await bus.connect(nats_url, "bench-gateway")
        await ensure_topology(nc.jetstream())
        app = await floor_app(nc) if kind == "floor" else await in_process_app(nc)
        server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=port, log_config=None, access_log=False, http="httptools"
            )
        )
        await server.serve()

    # As the service's own start does (lifecycle.start): without it the collector's pauses, not the
    # gateway's work, were most of the tail at 300/s.
    tune_garbage_collector()
    uvloop.run(run())


def _start(kind: str, port: int, nats_url: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "benchmarks.gateway", "serve", kind, str(port), nats_url]
    process = subprocess.Popen(command, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
            return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{kind} server did not start")


def _cpu_seconds(pid: int) -> float:
    """Return the user + system CPU time a process has used so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    # Fields 14 and 15 of stat(5) (utime, stime), counted after the ")" that ends the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# The possible-duplicate matcher takes two referrals for one child when the local authority, the sex
# and a date of birth agree: 4 sexes x 3650 days (ten years) of children that no two bodies share.
_SEXES = ("male", "female", "other", "unknown")
_DAYS = 3650
# The most referrals a closed loop may need (fresh children for all of them at up to this rate).
_CLOSED_LOOP_MAX_RATE = 1000


def referral_bodies(count: int, first: int = 0) -> list[bytes]:
    """Return ``count`` police referrals of distinct children: the ``first``-th onwards of 14,600.

    Identical bodies would all be one child to the possible-duplicate matcher (a Flag for each earlier
    referral, a compare-and-set on its match key); real nights are not.
    """
    if first + count > len(_SEXES) * _DAYS:
        raise ValueError(f"only {len(_SEXES) * _DAYS} distinct children; asked for {first + count}")
    bundle = json.loads((ROOT / "examples" / "police-night-referral.json").read_text())
    patient = bundle["entry"][0]["resource"]
    bodies = []
    for index in range(first, first + count):
        patient["gender"] = _SEXES[index // _DAYS]
        patient["birthDate"] = (date(2009, 1, 1) + timedelta(days=index % _DAYS)).isoformat()
        bodies.append(json.dumps(bundle).encode())
    return bodies


class _Children:
    """Hands each phase bodies of children not referred before in the run."""

    def __init__(self) -> None:
        self._next = 0

    def take(self, count: int) -> list[bytes]:
        """Return ``count`` bodies no earlier ``take`` returned."""
        bodies = referral_bodies(count, self._next)
        self._next += count
        return bodies


class _Connection:
    """One HTTP/1.1 keep-alive connection speaking just enough of the protocol for a POST and its answer.

    httpx costs the client more CPU per request than the bare endpoint costs the server, which would
    make the load generator, not the server, the bottleneck of the comparison.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> _Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def post(self, head: bytes, body: bytes) -> int:
        """Send one request; return the status of the answer, after reading all of it."""
        self.writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        length = 0
        for line in header.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def _request_head(headers: dict[str, str]) -> bytes:
    lines = ["POST /fhir HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode()


def _with_request_id(head: bytes) -> bytes:
    """Return ``head`` with a fresh ``X-Request-ID``: a referrer retrying safely sends one each time."""
    return head.replace(b"Content-Length: ", f"X-Request-ID: {uuid.uuid4()}\r\nContent-Length: ".encode())


async def _open_loop_one(
    port: int, head: bytes, bodies: list[bytes], rate: float, seconds: float, start_at: float, keyed: bool
) -> tuple[list[float], int, float]:
    """Start requests on schedule (open loop) whatever the answers; a new connection when all are busy.

    The schedule begins at ``start_at`` on the system-wide monotonic clock, which every client process
    reads alike, so processes given start times a fraction of an interval apart interleave evenly.
    """
    latencies: list[float] = []
    failures = 0
    # Opened before the clock starts: a connection opened on the first requests' time is not the
    # server's latency. More are opened only if all of these are busy.
    idle = [await _Connection.open(port) for _ in range(_OPEN_LOOP_CONNECTIONS)]

    async def one(body: bytes) -> None:
        nonlocal failures
        connection = idle.pop() if idle else await _Connection.open(port)
        request_head = _with_request_id(head) if keyed else head
        started = time.perf_counter()
        try:
            status = await connection.post(request_head, body)
        except (OSError, asyncio.IncompleteReadError):
            failures += 1
            connection.close()
            return
        if status == 201:
            latencies.append((time.perf_counter() - started) * 1000)
        else:
            failures += 1
        idle.append(connection)

    begin = start_at
    pending = []
    for i in range(int(rate * seconds)):
        delay = begin + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(one(bodies[i % len(bodies)])))
    await asyncio.gather(*pending)
    for connection in idle:
        connection.close()
    # Accepted per second over the time the answers really took: a server that falls behind the
    # arrival rate finishes late, and its rate must show it.
    return latencies, failures, time.monotonic() - begin


async def _closed_loop_one(
    port: int, head: bytes, bodies: list[bytes], in_flight: int, seconds: float
) -> int:
    """Keep ``in_flight`` requests outstanding for ``seconds``; return how many were accepted (201)."""
    accepted = 0
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal accepted
        connection = await _Connection.open(port)
        index = offset
        while time.perf_counter() < deadline:
            try:
                # Not `accepted += await ...`: that reads `accepted` before the await and loses counts.
                status = await connection.post(head, bodies[index % len(bodies)])
                accepted += status == 201
            except (OSError, asyncio.IncompleteReadError):
                connection.close()  # the server closed it (e.g. keep-alive limit): not an acceptance
                connection = await _Connection.open(port)
            index += in_flight
        connection.close()

    await asyncio.gather(*(worker(i) for i in range(in_flight)))
    return accepted


_Job = tuple[str, int, bytes, list[bytes], float, float, float]


def _client_process(job: _Job) -> tuple[list[float], int, float]:
    """Run one load-generator process's share of a phase and return its latencies and counts.

    ``job`` is ("open", port, head, bodies, rate, seconds, start_at), "open-keyed" alike (each request
    with its own ``X-Request-ID``), or ("closed", port, head, bodies, in_flight, seconds, 0).
    """
    kind, port, head, bodies, a, seconds, start_at = job
    if kind.startswith("open"):
        return asyncio.run(_open_loop_one(port, head, bodies, a, seconds, start_at, kind == "open-keyed"))
    return [], asyncio.run(_closed_loop_one(port, head, bodies, int(a), seconds)), seconds


def _open_loop(
    pool: ProcessPool,
    port: int,
    head: bytes,
    bodies: list[bytes],
    rate: int,
    seconds: float,
    *,
    keyed: bool = False,
) -> dict[str, float]:
    """Spread the arrival rate over the client processes; merge their latencies.

    ``keyed``: each request carries its own ``X-Request-ID`` (claimed and answered by the gateway).
    """
    share = [bodies[i::CLIENT_PROCESSES] for i in range(CLIENT_PROCESSES)]
    # Process i sends the i-th, (i + n)-th, ... request of one schedule: arrivals 1/rate apart.
    start_at = time.monotonic() + _SCHEDULE_LEAD_SECONDS
    kind = "open-keyed" if keyed else "open"
    jobs: list[_Job] = [
        (kind, port, head, share[i], rate / CLIENT_PROCESSES, seconds, start_at + i / rate)
        for i in range(CLIENT_PROCESSES)
    ]
    latencies: list[float] = []
    failures = 0
    elapsed = seconds
    for found, failed, took in pool.map(_client_process, jobs):
        latencies += found
        failures += failed
        elapsed = max(elapsed, took)
    return {
        "p50_ms": _percentile(latencies, 0.5),
        "p99_ms": _percentile(latencies, 0.99),
        "accepted_per_s": len(latencies) / elapsed,
        "failures": failures,
    }


def _closed_loop(pool: ProcessPool, port: int, head: bytes, bodies: list[bytes], seconds: float) -> float:
    share = [bodies[i::CLIENT_PROCESSES] for i in range(CLIENT_PROCESSES)]
    per_process = IN_FLIGHT // CLIENT_PROCESSES
    jobs: list[_Job] = [
        ("closed", port, head, share[i], float(per_process), seconds, 0.0) for i in range(CLIENT_PROCESSES)
    ]
    return sum(accepted for _, accepted, _ in pool.map(_client_process, jobs)) / seconds


def main() -> dict[str, float]:
    """Run both servers, measure, print and return the figures."""
    from haven.kit.nats_server import free_port, start_embedded_nats
    from services.gateway.testing import bearer

    head = _request_head(bearer("demo-police", "referrer"))
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder, Pool(CLIENT_PROCESSES) as pool:
        nats = start_embedded_nats(Path(folder), port=free_port())
        servers = {kind: free_port() for kind in ("gateway", "floor", "bare")}
        processes = [_start(kind, port, nats.url) for kind, port in servers.items()]
        try:
            for (kind, port), process in zip(servers.items(), processes, strict=True):
                children = _Children()
                _open_loop(pool, port, head, children.take(50), 50, 1.0)  # warm up
                for rate in RATES:
                    bodies = children.take(int(rate * SECONDS_PER_RATE))
                    cpu_at_start = _cpu_seconds(process.pid)
                    figures = _open_loop(pool, port, head, bodies, rate, SECONDS_PER_RATE)
                    # Paced, each request finds the process idle: dearer than in the closed loop.
                    accepted = len(bodies) - figures["failures"]
                    figures["cpu_ms_per_request"] = (
                        (_cpu_seconds(process.pid) - cpu_at_start) * 1000 / max(accepted, 1)
                    )
                    for name, value in figures.items():
                        results[f"{kind}_{name}_at_{rate}_per_s"] = value
                if kind == "gateway":
                    # As a referrer retrying safely posts: each request with its own X-Request-ID.
                    bodies = children.take(int(KEYED_RATE * SECONDS_PER_RATE))
                    keyed = _open_loop(pool, port, head, bodies, KEYED_RATE, SECONDS_PER_RATE, keyed=True)
                    for name in ("p50_ms", "p99_ms", "failures"):
                        results[f"gateway_keyed_{name}_at_{KEYED_RATE}_per_s"] = keyed[name]
                cpu_before = (_cpu_seconds(process.pid), _cpu_seconds(nats.process.pid))
                bodies = children.take(int(_CLOSED_LOOP_MAX_RATE * THROUGHPUT_SECONDS))
                closed_rate = _closed_loop(pool, port, head, bodies, THROUGHPUT_SECONDS)
                accepted = closed_rate * THROUGHPUT_SECONDS
                results[f"{kind}_accepted_per_s"] = closed_rate
                results[f"{kind}_cpu_ms_per_request"] = (
                    (_cpu_seconds(process.pid) - cpu_before[0]) * 1000 / max(accepted, 1)
                )
                if kind == "gateway":
                    results["nats_cpu_ms_per_referral"] = (
                        (_cpu_seconds(nats.process.pid) - cpu_before[1]) * 1000 / max(accepted, 1)
                    )
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=10)
            nats.stop()
    for rate in RATES:
        for q in ("p50", "p99"):
            bare = results[f"bare_{q}_ms_at_{rate}_per_s"]
            results[f"{q}_ratio_at_{rate}_per_s"] = results[f"gateway_{q}_ms_at_{rate}_per_s"] / bare
            results[f"floor_{q}_ratio_at_{rate}_per_s"] = results[f"floor_{q}_ms_at_{rate}_per_s"] / bare
    results["throughput_ratio"] = results["bare_accepted_per_s"] / results["gateway_accepted_per_s"]
    for name, value in results.items():
        print(f"{name:40s} {value:10.2f}")
    print(
        "target: p99 ratio <= 3, gateway_accepted_per_s >= 300; floor_*: the least a full POST does "
        f"(load from {CLIENT_PROCESSES} client processes, raw HTTP/1.1 keep-alive; {os.cpu_count()} CPUs)"
    )
    return results


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        os.environ.setdefault("OTEL_SDK_DISABLED", "true")
        _serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
