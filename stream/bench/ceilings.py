"""`clickscore bench broker | faust | triton`: the raw ceilings the worker runs under, here.

- broker: how fast one aiokafka consumer reads a topic of event-sized records, and how fast
  one producer writes them (what the worker could consume if it did nothing else).
- faust: how fast a Faust agent built like the worker's (the same app settings, one stream
  read in windows with `take_events`) receives those records when it does nothing with
  them: the cost of Faust's per-message delivery; with `--batches`, the same through the
  worker's `BatchDelivery` (what the worker pays per event since it reads whole batches).
- triton: sequences/s and request latency of the served model through Triton's gRPC API, for
  each (batch size, concurrency): `concurrency` closed-loop clients each send a request of
  `batch` sequences, wait for its answer, and send the next, for a fixed time. The same
  client library and input as the worker's (tritonclient aio, INT64 tokens), so these are
  the figures the worker can get from Triton.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from stream.contract.tokenizer import NUM_FIELDS, Vocabulary
from stream.kafka_security import aiokafka_options
from stream.settings import Settings


@dataclass(frozen=True)
class BrokerCeiling:
    records: int
    record_bytes: int
    produce_per_s: float
    consume_per_s: float


@dataclass(frozen=True)
class TritonPoint:
    batch: int
    concurrency: int
    requests: int
    sequences_per_s: float
    p50_ms: float
    p99_ms: float


def percentile_ms(latencies_s: list[float], q: float) -> float:
    return float(np.percentile(np.array(latencies_s), q)) * 1000 if latencies_s else 0.0


async def broker_ceiling(settings: Settings, records: int, record_bytes: int) -> BrokerCeiling:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from stream.ops.replay import ensure_topic

    topic = f"bench-broker-{uuid.uuid4().hex[:8]}"
    await ensure_topic(settings, topic)
    value = b"x" * record_bytes
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.broker_servers, linger_ms=5, **aiokafka_options(settings)
    )
    await producer.start()
    try:
        started = time.perf_counter()
        for i in range(records):
            await producer.send(topic, key=b"user-%d" % (i % 10_000), value=value)
        await producer.flush()
        produce_s = time.perf_counter() - started
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.broker_servers,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        **aiokafka_options(settings),
    )
    await consumer.start()
    try:
        read, first = 0, 0.0
        while read < records:
            batch = await consumer.getmany(timeout_ms=2000, max_records=10_000)
            if not batch:
                raise RuntimeError(f"read {read} of {records} records, then nothing for 2 s")
            first = first or time.perf_counter()  # from the first record: no group join
            read += sum(len(r) for r in batch.values())
        consume_s = time.perf_counter() - first
    finally:
        await consumer.stop()
    return BrokerCeiling(records, record_bytes, records / produce_s, records / consume_s)


@dataclass(frozen=True)
class FaustCeiling:
    records: int
    events_per_s: float
    cpu_share: float  # process CPU time / wall time while receiving (1.0 = one core)


async def _produce_events(settings: Settings, topic: str, records: int) -> None:
    from aiokafka import AIOKafkaProducer

    from stream.ops.replay import ensure_topic

    await ensure_topic(settings, topic)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.broker_servers, linger_ms=5, **aiokafka_options(settings)
    )
    await producer.start()
    try:
        for i in range(records):
            user = b"user-%d" % (i % 10_000)
            value = b'{"event_id":"e%d","user_id":"%s","event_type":"view","ts":0}' % (i, user)
            await producer.send(topic, key=user, value=value)
        await producer.flush()
    finally:
        await producer.stop()


def faust_ceiling(settings: Settings, records: int, *, batches: bool = False) -> FaustCeiling:
    """Runs a Faust worker in this process until it has received `records` events.

    By default through the agent's stream, Faust's per-record delivery; with `batches`,
    through the worker's `BatchDelivery` (whole fetched batches, acked per window).
    """
    import faust

    from stream.faust_ext import BatchDelivery
    from stream.worker.app import create_app

    settings = settings.for_run(f"bench-faust-{uuid.uuid4().hex[:8]}", table_store="memory://")
    asyncio.run(_produce_events(settings, settings.topic_events, records))
    app = create_app(settings)
    topic = app.topic(settings.topic_events, key_type=bytes, value_type=bytes)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    seen, began = [0], [0.0, 0.0]
    result: list[FaustCeiling] = []
    stopping: list[asyncio.Future[None]] = []
    delivery = (
        BatchDelivery(app, [settings.topic_events], settings.stream_buffer_maxsize)
        if batches
        else None
    )

    def received(count: int) -> None:
        if not seen[0]:  # from the first window: group join stays out of the figure
            began[:] = [time.perf_counter(), time.process_time()]
        seen[0] += count
        if seen[0] >= records and not result:
            wall = time.perf_counter() - began[0]
            cpu = time.process_time() - began[1]
            result.append(FaustCeiling(seen[0], seen[0] / wall, cpu / wall))
            stopping.append(asyncio.ensure_future(worker.stop()))

    @app.agent(topic)  # type: ignore[untyped-decorator]
    async def receive(stream: faust.StreamT[bytes]) -> None:
        if delivery is not None:
            async for window in delivery.windows(settings.window_max_events):
                received(len(window.records))
                window.ack()
            return
        windows = stream.take_events(settings.window_max_events, within=settings.flush_delay_s)
        async for events in windows:
            received(len(events))

    with contextlib.suppress(SystemExit):  # how a mode worker ends once stopped
        worker.execute_from_commandline()
    if not result:
        raise RuntimeError(f"the Faust worker stopped after {seen[0]} of {records} records")
    return result[0]


def sample_tokens(batch: int, length: int, seed: int = 0) -> npt.NDArray[np.int64]:
    """Full-length sequences of valid tokens (every field within its vocabulary)."""
    rng = np.random.default_rng(seed)
    sizes = Vocabulary().field_sizes
    fields = [rng.integers(1, size, size=(batch, length)) for size in sizes]
    tokens: npt.NDArray[np.int64] = np.stack(fields, axis=-1).astype(np.int64)
    return tokens


async def triton_point(
    settings: Settings, batch: int, concurrency: int, duration_s: float
) -> TritonPoint:
    import tritonclient.grpc.aio as grpcclient

    from stream.worker.triton_client import (
        FEATURE_INPUT,
        INPUT,
        ITEM_INPUT,
        NEXT_OUTPUTS,
        OUTPUTS,
    )

    tokens = sample_tokens(batch, settings.sequence_length)
    assert tokens.shape[-1] == NUM_FIELDS
    client = grpcclient.InferenceServerClient(settings.triton_grpc_url)
    tensor = grpcclient.InferInput(INPUT, list(tokens.shape), "INT64")
    tensor.set_data_from_numpy(tokens)
    inputs = [tensor]
    names: tuple[str, ...] = OUTPUTS
    # Everything the worker asks of this model: with next items, the item hashes too.
    config = (await client.get_model_config(settings.triton_model)).config
    if any(i.name == ITEM_INPUT for i in config.input):
        hashes = grpcclient.InferInput(ITEM_INPUT, list(tokens.shape[:2]), "INT64")
        rng = np.random.default_rng(1)
        hashes.set_data_from_numpy(rng.integers(1, 1 << 32, size=tokens.shape[:2]))
        inputs.append(hashes)
        names += tuple(n for n in NEXT_OUTPUTS if any(o.name == n for o in config.output))
    # And behaviour features where it takes them (a feature head serves churn and purchase).
    widths = [int(i.dims[0]) for i in config.input if i.name == FEATURE_INPUT]
    if widths:
        features = grpcclient.InferInput(FEATURE_INPUT, [batch, widths[0]], "FP32")
        values = np.random.default_rng(2).standard_normal((batch, widths[0]))
        features.set_data_from_numpy(values.astype(np.float32))
        inputs.append(features)
    outputs = [grpcclient.InferRequestedOutput(name) for name in names]
    latencies: list[float] = []

    async def one() -> None:
        began = time.perf_counter()
        await client.infer(settings.triton_model, inputs, outputs=outputs)
        latencies.append(time.perf_counter() - began)

    async def closed_loop(deadline: float) -> None:
        while time.perf_counter() < deadline:
            await one()

    try:
        await one()  # warm-up: connection and the model's first batch of this shape
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(closed_loop(started + duration_s) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
    return TritonPoint(
        batch=batch,
        concurrency=concurrency,
        requests=len(latencies),
        sequences_per_s=len(latencies) * batch / elapsed,
        p50_ms=percentile_ms(latencies, 50),
        p99_ms=percentile_ms(latencies, 99),
    )


async def triton_grid(
    settings: Settings, batches: list[int], concurrencies: list[int], duration_s: float
) -> list[TritonPoint]:
    return [
        await triton_point(settings, batch, concurrency, duration_s)
        for batch in batches
        for concurrency in concurrencies
    ]
