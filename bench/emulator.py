"""Benchmark of the Batch API emulator (not a test).

    .venv/bin/python bench/emulator.py [--docs 300] [--accepts 200]

1. Accept latency: time from sending a 50-line POST /v1/batches until its 200 arrives, against
   the CLI emulator in a subprocess on loopback (so client and server do not share a GIL).
   Measured twice: with the server idle between submits, and back to back while the server's
   worker is busy processing the previous batches.
2. Engine throughput: engine.run over ~2 KB generated English documents, per model and mixed,
   in this one process (one core); plus the worker's whole per-line path (validation, engine,
   output line encoding) for the mixed set.

Documents are generated here from a fixed seed: nothing is downloaded.
Targets: 50-line accept < 20 ms median; >= 2,000 lines/s per core.
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batchapi.emulator import engine  # noqa: E402
from batchapi.emulator.config import EmulatorConfig  # noqa: E402
from batchapi.emulator.worker import process_request  # noqa: E402
from batchapi.models import (  # noqa: E402
    ClassifyBody,
    ExtractBody,
    Label,
    RequestLine,
    SummarizeBody,
    encode_jsonl,
)

FIRST = ["Maria", "James", "Aisha", "Kenji", "Sofia", "Daniel", "Priya", "Lucas", "Emma", "Omar"]
LAST = ["Garcia", "Smith", "Khan", "Tanaka", "Rossi", "Müller", "Patel", "Silva", "Brown", "Haddad"]
ORGS = ["Acme Corp", "Northwind Traders", "Globex Ltd", "Initech", "Umbrella Holdings",
        "Blue Harbor Bank", "Stark Industries", "Vertex Logistics"]  # fmt: skip
PLACES = ["Berlin", "Lagos", "Osaka", "Lisbon", "Toronto", "Chennai", "Lyon", "Denver"]
TOPICS = {
    "billing": ["invoice", "payment", "refund", "charge", "subscription", "billing statement"],
    "shipping": ["delivery", "parcel", "shipment", "courier", "tracking number", "warehouse"],
    "product": ["feature", "release", "update", "dashboard", "integration", "mobile app"],
    "hr": ["hiring plan", "team offsite", "training budget", "new manager", "payroll"],
}
TEMPLATES = [
    "{person} from {org} wrote on {day} about the {thing} that was {adj} last week.",
    "The {thing} for the {place} office was {adj}, according to {person}.",
    "{org} expects the {thing} to cost about {amount} dollars before the end of {month}.",
    "Customers in {place} asked whether the {thing} would be {adj} again this quarter.",
    "{person} said the team at {org} will review every {thing} by {day}.",
    "After the meeting in {place}, {person} confirmed that the {thing} is now {adj}.",
    "A report from {org} shows that {percent} percent of each {thing} arrived {adj}.",
    "Please contact {person} at {email} if the {thing} is still {adj} on {day}.",
]
ADJECTIVES = ["late", "delayed", "approved", "duplicated", "cancelled", "ready", "incomplete"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
MONTHS = ["March", "June", "September", "December"]


def make_document(rng: random.Random, target_chars: int = 2_000) -> str:
    topic = rng.choice(list(TOPICS))
    sentences: list[str] = []
    size = 0
    while size < target_chars:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        sentence = rng.choice(TEMPLATES).format(
            person=f"{first} {last}",
            org=rng.choice(ORGS),
            place=rng.choice(PLACES),
            thing=rng.choice(TOPICS[topic]),
            adj=rng.choice(ADJECTIVES),
            day=rng.choice(DAYS),
            month=rng.choice(MONTHS),
            amount=f"{rng.randint(2, 900) * 1000:,}",
            percent=rng.randint(3, 97),
            email=f"{first.lower()}.{last.lower()}@example.com",
        )
        sentences.append(sentence)
        size += len(sentence) + 1
        if rng.random() < 0.15:
            sentences.append("\n\n")
    return " ".join(sentences).replace(" \n\n ", "\n\n")


LABELS = [
    Label(name="billing", rubric="Is this about an invoice, a payment or a refund?"),
    Label(name="shipping", rubric="Is this about a delivery or a shipment?"),
    Label(name="product", rubric="Is this about a software feature or release?"),
    Label(name="hr", rubric="Is this about staff, hiring or payroll?"),
]
ENTITIES = {
    "person": "a person's full name",
    "organization": "a company or organisation",
    "location": "a city or place",
    "email": "an email address",
}


def make_bodies(
    count: int, seed: int
) -> dict[str, list[ExtractBody | SummarizeBody | ClassifyBody]]:
    rng = random.Random(seed)
    docs = [make_document(rng) for _ in range(count)]
    return {
        "extract": [ExtractBody(text=doc, entities=ENTITIES) for doc in docs],
        "summarize": [SummarizeBody(text=doc, instructions="Two sentences.") for doc in docs],
        "classify": [ClassifyBody(text=doc, labels=LABELS) for doc in docs],
    }


def lines_per_second(run: Callable[[], object], lines: int, repeat: int = 3) -> float:
    best = min(_timed(run) for _ in range(repeat))
    return lines / best


def _timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


# --------------------------------------------------------------------------- accept latency


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_cli(port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "batchapi.emulator", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, "BATCH_API_KEY": "bench-key"},
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    stdout = process.stdout
    ready: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: ready.put(stdout.readline()), daemon=True).start()
    line = ready.get(timeout=30)
    if "listening on" not in line:
        process.kill()
        raise RuntimeError(f"emulator did not start: {line!r}")
    return process


def accept_times(
    client: httpx.Client, payloads: Sequence[bytes], wait_between: bool
) -> list[float]:
    times = []
    for payload in payloads:
        started = time.perf_counter()
        response = client.post("/v1/batches", content=payload)
        times.append(time.perf_counter() - started)
        response.raise_for_status()
        if wait_between:
            batch_id = response.json()["id"]
            while client.get(f"/v1/batches/{batch_id}").json()["status"] not in (
                "completed",
                "failed",
            ):
                time.sleep(0.002)
    return times


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=300, help="documents per model")
    parser.add_argument("--accepts", type=int, default=200, help="50-line batches to submit")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    bodies = make_bodies(args.docs, args.seed)
    mean_chars = statistics.mean(len(body.text) for body in bodies["extract"])
    rows: list[tuple[str, str]] = []

    # Accept latency first, while this process is still cool.
    mixed = [body for group in zip(*bodies.values(), strict=True) for body in group]
    payloads = []
    for number in range(args.accepts):
        offset = (number * 50) % (len(mixed) - 50)
        payloads.append(
            encode_jsonl(
                RequestLine(custom_id=f"b{number}-{index}", body=body)
                for index, body in enumerate(mixed[offset : offset + 50])
            )
        )
    port = free_port()
    process = start_cli(port)
    try:
        base_url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base_url, headers={"x-api-key": "bench-key"}) as client:
            accept_times(client, payloads[:10], wait_between=True)  # warm-up
            idle = accept_times(client, payloads[10:], wait_between=True)
            busy = accept_times(client, payloads[10:], wait_between=False)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    payload_kb = statistics.mean(len(p) for p in payloads) / 1024
    for name, times in (("idle server", idle), ("busy server, back to back", busy)):
        rows.append(
            (
                f"accept 50-line batch ({payload_kb:.0f} KB), {name}",
                f"median {statistics.median(times) * 1000:.1f} ms, "
                f"p95 {percentile(times, 0.95) * 1000:.1f} ms (n={len(times)})",
            )
        )

    for model, group in bodies.items():
        rate = lines_per_second(lambda group=group: [engine.run(b) for b in group], len(group))
        rows.append((f"engine.run {model}", f"{rate:,.0f} lines/s"))
    rate = lines_per_second(lambda: [engine.run(b) for b in mixed], len(mixed))
    rows.append(("engine.run mixed (all three models)", f"{rate:,.0f} lines/s"))

    requests = [
        encode_jsonl(
            RequestLine(custom_id=f"w{start + i}", body=body)
            for i, body in enumerate(mixed[start : start + 50])
        )
        for start in range(0, len(mixed), 50)
    ]
    config = EmulatorConfig()
    rate = lines_per_second(
        lambda: [process_request(request, 1, config) for request in requests], len(mixed)
    )
    rows.append(("worker path mixed (validate + engine + encode)", f"{rate:,.0f} lines/s"))

    print(
        f"batch-enrich emulator benchmark: {args.docs} documents per model, "
        f"mean {mean_chars:,.0f} chars, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cpus; engine figures are one process (one core)"
    )
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  result")
    print(f"{'-' * width}  {'-' * 40}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("targets: accept median < 20 ms; engine >= 2,000 lines/s per core")


if __name__ == "__main__":
    main()
