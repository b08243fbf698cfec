"""`clickscore bench`: its subcommands and their printed figures.

`bench worker` measures one worker process end to end (stream/bench/worker.py); `bench
latency` its latency at offered rates (stream/bench/latency.py); `bench table` the user
table at 10k-1M users (stream/bench/scaling.py); `bench silent` the silent-user index at
10k-1M users (stream/bench/silent.py); `bench broker`, `bench faust` and `bench
triton` measure the ceilings under it (stream/bench/ceilings.py); `bench gpu` the served
model through Triton against its in-process ceiling (stream/bench/gpu.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import uuid
from pathlib import Path

from stream.bench.serving import RUNTIMES, ServingRow
from stream.bench.worker import bench_worker, describe_machine
from stream.settings import Settings


def _bench_command(settings: Settings, args: argparse.Namespace) -> int:
    settings = settings.model_copy(update={"table_store": args.store})
    result = asyncio.run(
        bench_worker(
            settings,
            args.users,
            args.days,
            args.seed,
            args.timeout,
            flamegraph=args.flamegraph,
            workers=args.workers,
        )
    )
    if args.json:
        print(json.dumps({"machine": describe_machine(), **dataclasses.asdict(result)}))
        return 0
    print(f"machine:      {describe_machine()}")
    print(f"events:       {result.events} from {result.users} synthetic users")
    print(f"workers:      {result.workers} in one consumer group")
    print(f"produce:      {result.produce_s:.1f} s")
    print(f"start-up:     {result.startup_s:.1f} s (worker start to first score)")
    print(f"scoring:      {result.scoring_s:.1f} s")
    print(f"throughput:   {result.events_per_s:,.0f} events/s end to end")
    print(
        f"worker CPU:   {result.worker_cpu_us_per_event:,.1f} µs per event "
        f"({result.worker_cpu_share:.0%} of one core while scoring; Triton not included)"
    )
    if result.peak_rss_bytes is not None:
        print(f"worker peak:  {result.peak_rss_bytes / 2**20:,.0f} MiB resident")
    return 0


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _broker_command(settings: Settings, args: argparse.Namespace) -> int:
    from stream.bench.ceilings import broker_ceiling

    result = asyncio.run(broker_ceiling(settings, args.records, args.bytes))
    print(f"machine:  {describe_machine()}")
    print(f"records:  {result.records:,} of {result.record_bytes} bytes, one topic")
    print(f"produce:  {result.produce_per_s:,.0f} records/s (one aiokafka producer)")
    print(f"consume:  {result.consume_per_s:,.0f} records/s (one aiokafka consumer)")
    return 0


def _faust_command(settings: Settings, args: argparse.Namespace) -> int:
    from stream.bench.ceilings import faust_ceiling

    result = faust_ceiling(settings, args.records, batches=args.batches)
    how = "whole fetched batches (BatchDelivery)" if args.batches else "Faust's stream"
    print(f"machine:  {describe_machine()}")
    print(f"records:  {result.records:,} events, the worker's Faust settings, no processing")
    print(f"through:  {how}")
    print(f"received: {result.events_per_s:,.0f} events/s at {result.cpu_share:.0%} of one core")
    print(f"CPU:      {result.cpu_share / result.events_per_s * 1e6:,.1f} µs per event")
    return 0


def _triton_command(settings: Settings, args: argparse.Namespace) -> int:
    from stream.bench.ceilings import triton_grid

    points = asyncio.run(triton_grid(settings, args.batches, args.concurrency, args.seconds))
    print(f"machine: {describe_machine()}")
    where = f"model '{settings.triton_model}' at {settings.triton_grpc_url}"
    print(f"{where}, {args.seconds:g} s per point\n")
    print("| batch | concurrency | requests | sequences/s | p50 ms | p99 ms |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in points:
        print(
            f"| {p.batch} | {p.concurrency} | {p.requests} | {p.sequences_per_s:,.0f} "
            f"| {p.p50_ms:.1f} | {p.p99_ms:.1f} |"
        )
    return 0


def _gpu_command(settings: Settings, args: argparse.Namespace) -> int:
    from stream.bench.gpu import gpu_bench

    result = asyncio.run(
        gpu_bench(
            settings,
            args.batches,
            args.concurrency,
            args.seconds,
            args.repeats,
            args.device,
            config=args.config,
            threads=args.threads,
        )
    )
    print(f"machine: {describe_machine()}")
    print(
        f"model '{settings.triton_model}' version {result.version}; in process "
        f"(ServedVersion, ONNX Runtime) on {result.device} ({result.dtype}, median of "
        f"{args.repeats}); {load_average()}; Triton at "
        f"{settings.triton_grpc_url} (max_batch_size {result.max_batch_size}), best of "
        f"concurrency {','.join(map(str, args.concurrency))}, {args.seconds:g} s per point\n"
    )
    print(
        "| batch | in process ms | in process sequences/s | Triton sequences/s "
        "| at concurrency | Triton p50 ms | Triton / in process |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for point in result.ceiling:
        best = result.best_triton(point.batch)
        served = (
            f"{best.sequences_per_s:,.0f} | {best.concurrency} | {best.p50_ms:.1f} "
            f"| {best.sequences_per_s / point.sequences_per_s:.0%}"
            if best is not None
            else "above max_batch_size | | |"
        )
        print(
            f"| {point.batch:,} | {point.median_ms:.2f} | {point.sequences_per_s:,.0f} | {served} |"
        )
    if args.json:  # last, as one line
        print(json.dumps({"machine": describe_machine(), **dataclasses.asdict(result)}))
    return 0


def _latency_command(settings: Settings, args: argparse.Namespace) -> int:
    from stream.bench.latency import measure_rate, measure_saturation, rate_events
    from stream.bench.latency_report import default_rates, json_number, latency_json, rate_row
    from stream.datasets.synthetic import SyntheticConfig, generate

    history, _ = generate(SyntheticConfig(users=args.users, days=args.days, seed=args.seed))
    print(f"machine: {describe_machine()}; {load_average()}")
    saturation = args.saturation
    if saturation is None:
        backlog = rate_events(history, args.saturation_events, 1, prefix=_run_prefix())
        saturation = asyncio.run(measure_saturation(settings, backlog, args.timeout))
        print(
            f"saturation: {saturation:,.0f} events/s achieved on a backlog of "
            f"{len(backlog):,} events sent unpaced; {load_average()}"
        )
    else:
        print(f"saturation: {saturation:,.0f} events/s (given)")
    rates = args.rates or default_rates(saturation)
    print(f"{args.users} synthetic users, {args.seconds:g} s of events per rate\n")
    print(
        "| offered events/s | events | achieved events/s "
        "| event-triggered event→score p50 / p95 / p99 ms (→ scored_at p50 / p99) "
        "| alerts | event→alert written p50 / p95 / p99 ms | saturated "
        "| events per window | window ms: fold / score / results / table (p99 score) "
        "| Triton per request ms: client / request / queue / compute (sequences) | load |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |")
    rows: list[dict[str, object]] = []
    for rate in rates:
        events = rate_events(history, rate, args.seconds, prefix=_run_prefix())
        p = asyncio.run(measure_rate(settings, events, rate, args.timeout))
        load = load_average()
        s50, s95, s99 = p.score_ms
        a50, a95, a99 = p.alert_ms
        saturated = f"yes, drained {p.drain_s:.1f} s after the last send" if p.saturated else "no"
        stages = " / ".join(
            f"{p.stage_ms.get(name, 0):.1f}" for name in ("fold", "score", "results", "table")
        )
        t = p.triton
        served = (
            f"{p.triton_client_ms:.1f} / {t['request_ms']:.1f} / {t['queue_ms']:.1f} "
            f"/ {t['compute_ms']:.1f} ({t['sequences_per_request']:.0f})"
            if t
            else "no request"
        )
        print(
            f"| {rate:,.0f} | {p.events:,} | {p.achieved_per_s:,.0f} "
            f"| {s50:,.0f} / {s95:,.0f} / {s99:,.0f} "
            f"({p.scored_ms[0]:,.0f} / {p.scored_ms[2]:,.0f}) | {p.alerts} "
            f"| {a50:,.0f} / {a95:,.0f} / {a99:,.0f} "
            f"| {saturated} "
            f"| {p.window_events:,.0f} | {stages} ({p.stage_p99_ms.get('score', 0):.0f}) "
            f"| {served} | {load} |",
            flush=True,
        )
        rows.append(
            rate_row(
                rate,
                p.score_ms,
                achieved_events_per_s=round(p.achieved_per_s, 1),
                saturated=p.saturated,
                scored_at_p50_ms=json_number(p.scored_ms[0]),
                scored_at_p99_ms=json_number(p.scored_ms[2]),
                events_per_window=round(p.window_events, 1),
                stage_ms={k: round(v, 2) for k, v in p.stage_ms.items()},
                stage_p99_ms={k: round(v, 2) for k, v in p.stage_p99_ms.items()},
                triton_client_ms=round(p.triton_client_ms, 2),
                triton={k: round(v, 2) for k, v in p.triton.items()},
                load=load,
            )
        )
    if args.json:
        print(json.dumps(latency_json(round(saturation, 1), rows)))
    return 0


def _run_prefix() -> str:
    return f"{uuid.uuid4().hex[:6]}-"


def load_average() -> str:
    """The 1-minute load average, printed with every figure: these cores are shared."""
    return f"load {os.getloadavg()[0]:.2f}"


def _serving_command(settings: Settings, args: argparse.Namespace) -> int:
    from stream.bench.serving import bench_serving, ratios, rows_json, served_folder

    folder = args.folder or served_folder(settings)
    print(f"machine: {describe_machine()}; {load_average()}")
    print(
        f"version folder {folder}; {args.threads} thread(s) in process; "
        f"{args.seconds:g} s per point\n"
    )
    print(
        "| runtime | batch | calls | sequences/s | cores | sequences/s per core "
        "| sequences per CPU-second | load |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")

    def show(row: ServingRow) -> None:
        print(
            f"| {row.runtime} | {row.batch} | {row.calls} | {row.sequences_per_s:,.0f} "
            f"| {row.cores:g} | {row.sequences_per_s_per_core:,.0f} "
            f"| {'-' if row.sequences_per_cpu_s is None else f'{row.sequences_per_cpu_s:,.0f}'} "
            f"| {load_average()} |",
            flush=True,
        )

    rows, missing = bench_serving(
        settings,
        folder=folder,
        torch_from=args.torch_from,
        runtimes=args.runtimes,
        batches=args.batches,
        threads=args.threads,
        seconds=args.seconds,
        triton_cores_given=args.triton_cores,
        on_row=show,
    )
    against = ratios(rows)
    if against:
        print("\nper core, against ort_fp32 at the same batch:")
        for (runtime, batch), ratio in sorted(against.items()):
            print(f"  {runtime:>8} batch {batch:>4}: {ratio:.2f}x")
    for line in missing:
        print(f"NOT MEASURED {line}")
    if args.json:
        print(json.dumps(rows_json(rows)))
    return 1 if missing else 0


def _table_command(settings: Settings, args: argparse.Namespace) -> int:
    from stream.bench.scaling import measure_table

    print(f"machine: {describe_machine()}")
    print(f"full sequences of {settings.sequence_length} events, {args.updates:,} updates\n")
    print(
        "| store | active users | state bytes | of which sequence | RSS growth per user "
        "| fill s | µs per event folded |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for store in args.stores:
        for users in args.users:
            p = measure_table(store, users, args.updates, settings.sequence_length)
            print(
                f"| {p.store} | {p.users:,} | {p.state_bytes:,.0f} | {p.sequence_bytes:,} "
                f"| {p.rss_per_user:,.0f} | {p.fill_s:.1f} | {p.update_us:.1f} |",
                flush=True,
            )
    return 0


def _float_list(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part]


def _silent_command(settings: Settings, args: argparse.Namespace) -> int:
    from stream.bench.silent import bench_rebuild, bench_silent
    from stream.scoring.idle import IdlePolicy

    policy = IdlePolicy(
        settings.silent_rescore_after_s,
        settings.silent_rescore_max_s,
        settings.silent_rescore_max_users,
    )
    print(f"machine:  {describe_machine()}")
    print(
        f"policy:   re-score after {policy.idle_s} s, doubling to {policy.max_idle_s} s, "
        f"at most {policy.max_users_per_pass} users per pass"
    )
    for users in args.users:
        r = bench_silent(users, policy)
        print(
            f"{r.users:>9,} users: index {r.index_bytes / 2**20:,.0f} MiB "
            f"({r.index_bytes / r.users:,.0f} B/user), touch {r.touch_us:.2f} us CPU/user, "
            f"pass {r.pass_ms:.1f} ms CPU (slowest {r.slowest_pass_ms:.1f}) per "
            f"{policy.max_users_per_pass} users, "
            f"{r.passes:,} passes to re-score {r.rescored:,}"
        )
    if args.rebuild_stores:
        print(
            "\nrebuilding the index from the table (a worker assigned every partition):\n"
            "| store | users | indexed | wall s | CPU s | µs CPU per user "
            "| longest stretch without yielding, ms | RSS growth MiB |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )
    for store in args.rebuild_stores:
        for users in args.users:
            b = bench_rebuild(store, users, policy, settings.sequence_length)
            print(
                f"| {b.store} | {b.users:,} | {b.indexed:,} | {b.wall_s:.2f} | {b.cpu_s:.2f} "
                f"| {b.cpu_s / b.users * 1e6:.2f} | {b.longest_block_ms:.0f} "
                f"| {b.rss_growth_bytes / 2**20:,.0f} |",
                flush=True,
            )
    return 0


def add_parsers(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = commands.add_parser("bench", help="measure the worker on the local stack")
    targets = bench.add_subparsers(dest="target", required=True)
    broker = targets.add_parser("broker", help="raw aiokafka produce and consume records/s")
    broker.add_argument("--records", type=int, default=200_000)
    broker.add_argument("--bytes", type=int, default=200, help="bytes per record")
    broker.set_defaults(handler=_broker_command)
    faust = targets.add_parser(
        "faust", help="events/s a Faust agent receives when it does nothing with them"
    )
    faust.add_argument("--records", type=int, default=100_000)
    faust.add_argument(
        "--batches", action="store_true", help="through the worker's whole-batch delivery"
    )
    faust.set_defaults(handler=_faust_command)
    triton = targets.add_parser(
        "triton", help="sequences/s and latency of the served model by batch and concurrency"
    )
    triton.add_argument("--batches", type=_int_list, default=[1, 8, 64, 256])
    triton.add_argument("--concurrency", type=_int_list, default=[1, 4, 16, 32])
    triton.add_argument("--seconds", type=float, default=3.0, help="per point")
    triton.set_defaults(handler=_triton_command)
    gpu = targets.add_parser(
        "gpu", help="the served model through Triton against its in-process ceiling, one run"
    )
    gpu.add_argument("--batches", type=_int_list, default=[1, 256, 1024, 4096, 8192])
    gpu.add_argument("--concurrency", type=_int_list, default=[1, 2, 4])
    gpu.add_argument("--seconds", type=float, default=3.0, help="per Triton point")
    gpu.add_argument("--repeats", type=int, default=30, help="in-process calls per batch")
    gpu.add_argument(
        "--device",
        default="auto",
        help="ONNX Runtime's provider in process: cuda (CUDA, CPU fallback), cpu, or auto "
        "(cuda where ORT has it)",
    )
    gpu.add_argument("--threads", type=int, default=1, help="ORT intra-op threads in process")
    gpu.add_argument(
        "--config",
        type=Path,
        default=None,
        help="first reload the served model with this config.pbtxt (e.g. config.gpu.pbtxt)",
    )
    gpu.add_argument("--json", action="store_true", help="end with one JSON line")
    gpu.set_defaults(handler=_gpu_command)
    worker = targets.add_parser("worker", help="end-to-end events/s of one worker process")
    worker.add_argument("--users", type=int, default=2000)
    worker.add_argument("--days", type=int, default=7)
    worker.add_argument("--seed", type=int, default=0)
    worker.add_argument("--store", default="memory://", help="the worker's table store")
    worker.add_argument("--timeout", type=float, default=600.0)
    worker.add_argument("--json", action="store_true", help="print one JSON object")
    worker.add_argument(
        "--workers",
        type=int,
        default=None,
        help="run this many workers in one group, joined before the backlog is sent",
    )
    worker.add_argument(
        "--flamegraph",
        type=Path,
        default=None,
        help="record the worker with py-spy into this SVG (needs py-spy, the [dev] extra)",
    )
    worker.set_defaults(handler=_bench_command)
    table = targets.add_parser(
        "table", help="memory and per-event cost of the user table at 10k to 1M users"
    )
    table.add_argument("--users", type=_int_list, default=[10_000, 100_000, 1_000_000])
    table.add_argument("--stores", type=lambda t: t.split(","), default=["memory", "rocksdb"])
    table.add_argument("--updates", type=int, default=100_000)
    table.set_defaults(handler=_table_command)
    silent = targets.add_parser(
        "silent", help="memory and cost of the silent-user index at 10k to 1M users"
    )
    silent.add_argument("--users", type=_int_list, default=[10_000, 100_000, 1_000_000])
    silent.add_argument(
        "--rebuild-stores",
        type=lambda t: [part for part in t.split(",") if part],
        default=["memory", "rocksdb"],
        help="stores to time the index rebuild from ('' for none)",
    )
    silent.set_defaults(handler=_silent_command)
    serving = targets.add_parser(
        "serving",
        help="one version's sequences/s per core: torch eager, ORT fp32 and int8, Triton",
        description="Per core: the torch and ORT rows run in this process on --threads "
        "threads (torch.set_num_threads, ORT intra_op_num_threads) and are divided by that; "
        "the triton row is divided by the cores its served config allows (instances x "
        "CLICKSCORE_SERVING_INTRA_OP_THREADS, at most this machine's cores; tritonserver's "
        "own gRPC threads are not counted) or by --triton-cores. "
        "Exits 1, naming why, when a runtime could not be measured.",
    )
    serving.add_argument("--batches", type=_int_list, default=[1, 16, 64, 256])
    serving.add_argument(
        "--runtimes",
        type=lambda t: [part for part in t.split(",") if part],
        default=list(RUNTIMES),
        help=f"comma-separated, of {','.join(RUNTIMES)}",
    )
    serving.add_argument("--threads", type=int, default=1, help="in-process runtime threads")
    serving.add_argument("--seconds", type=float, default=3.0, help="per point")
    serving.add_argument(
        "--folder", type=Path, default=None, help="format-2 version folder (default: served)"
    )
    serving.add_argument(
        "--torch-from",
        type=Path,
        default=None,
        help="format-1 folder with the torch weights (default: the one it was migrated from)",
    )
    serving.add_argument("--triton-cores", type=float, default=None)
    serving.add_argument("--json", action="store_true", help="end with one JSON line of rows")
    serving.set_defaults(handler=_serving_command)
    latency = targets.add_parser(
        "latency", help="event-to-score and event-to-alert latency at offered rates"
    )
    latency.add_argument(
        "--rates",
        type=_float_list,
        default=None,
        help="offered events/s, comma-separated (default: 1/4, 1/2 and 3/4 of the saturation, "
        "each rounded down to 10)",
    )
    latency.add_argument(
        "--saturation",
        type=float,
        default=None,
        help="take this as the saturation rate instead of measuring it first",
    )
    latency.add_argument(
        "--saturation-events",
        type=int,
        default=40_000,
        help="events of the unpaced backlog that measures the saturation",
    )
    latency.add_argument(
        "--json", action="store_true", help="end with one JSON line (saturation and rates)"
    )
    latency.add_argument("--seconds", type=float, default=20.0, help="of events per rate")
    latency.add_argument("--users", type=int, default=5000)
    latency.add_argument("--days", type=int, default=3)
    latency.add_argument("--seed", type=int, default=0)
    latency.add_argument("--timeout", type=float, default=300.0)
    latency.set_defaults(handler=_latency_command)
