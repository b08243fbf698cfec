"""The pure parts of `clickscore bench latency | table`."""

from __future__ import annotations

import math

import pytest

from stream.bench.latency import newest_sent_s, percentiles_ms, rate_events, score_latency_s
from stream.bench.scaling import measure_table
from stream.contract.events import Event


def test_rate_events_takes_the_newest_and_prefixes_ids() -> None:
    events = [Event(f"e{i}", f"u{i % 3}", 1_000 * (10 - i), "view") for i in range(10)]
    chosen = rate_events(events, rate=2, seconds=2, prefix="r1-")
    assert [e.ts_ms for e in chosen] == [7_000, 8_000, 9_000, 10_000]
    assert [e.event_id for e in chosen] == ["r1-e3", "r1-e2", "r1-e1", "r1-e0"]
    assert {e.user_id for e in chosen} == {"r1-u0", "r1-u1", "r1-u2"}


def test_percentiles_and_the_newest_sent_event() -> None:
    assert percentiles_ms([0.001 * i for i in range(1, 101)]) == pytest.approx((50.5, 95.05, 99.01))
    assert all(math.isnan(v) for v in percentiles_ms([]))
    sent = {"a": 1_000, "b": 3_000}
    assert newest_sent_s(["a", "b", "unknown"], sent) == 3.0
    assert newest_sent_s(["unknown"], sent) is None


def test_latency_counts_event_triggered_scores_and_skips_silent_rescores() -> None:
    sent = {"u1-e9": 1_000_000}
    event = {"user_id": "u1", "last_event_id": "u1-e9", "trigger": "event", "silence_ms": 0}
    silent = event | {"trigger": "silence", "silence_ms": 86_400_000}
    schema_2 = {"user_id": "u1", "last_event_id": "u1-e9"}  # no trigger: always an event
    assert score_latency_s(event, sent, now_s=1_000.25) == pytest.approx(0.25)
    assert score_latency_s(schema_2, sent, now_s=1_000.25) == pytest.approx(0.25)
    # The same event id, read hours later: counted, it would be hours of "latency".
    assert score_latency_s(silent, sent, now_s=4_600.0) is None
    assert score_latency_s(event | {"last_event_id": "other"}, sent, now_s=1_001.0) is None


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_table_bench_fills_and_folds(store: str) -> None:
    point = measure_table(store, users=300, updates=200, length=64)
    assert (point.store, point.users, point.sequence_bytes) == (store, 300, 64 * 6 * 2)
    assert point.state_bytes > point.sequence_bytes  # header and remembered ids on top
    assert point.update_us > 0 and point.fill_s >= 0


def test_cpu_samples_are_read_between_samples() -> None:
    from stream.bench.worker import CpuSamples
    from stream.stack.process import ProcessRecord

    samples = CpuSamples(ProcessRecord("w", 1, 0, [], "log"))
    samples.times, samples.cpu = [10.0, 11.0, 13.0], [1.0, 1.5, 2.5]
    assert samples.at(9.0) == 1.0  # before the first sample: the first
    assert samples.at(10.5) == pytest.approx(1.25)
    assert samples.at(12.0) == pytest.approx(2.0)
    assert samples.at(20.0) == 2.5  # after the last: the last


def test_default_rates_include_one_at_or_below_half_the_saturation() -> None:
    from stream.bench.latency_report import default_rates

    assert default_rates(1_555) == [380.0, 770.0, 1160.0]
    for saturation in (15.0, 999.0, 4_321.5, 20_000.0):
        rates = default_rates(saturation)
        assert rates == sorted(set(rates))
        assert any(r <= saturation / 2 for r in rates)
        assert all(r < saturation for r in rates)
    assert default_rates(12.0) == [3.0, 6.0, 9.0]  # below one step: to 0.1
    with pytest.raises(ValueError):
        default_rates(0.0)


def test_latency_json_has_the_issue_shape_and_no_nan() -> None:
    import json

    from stream.bench.latency_report import latency_json, rate_row

    rows = [
        rate_row(700.0, (83.04, 500.0, 1_982.44), saturated=False),
        rate_row(9_000.0, (math.nan, math.nan, math.nan)),
    ]
    line = json.loads(json.dumps(latency_json(1_555.0, rows), allow_nan=False))
    assert line["saturation_events_per_s"] == 1_555.0
    first, second = line["rates"]
    assert (first["offered_events_per_s"], first["p50_ms"], first["p99_ms"]) == (
        700.0,
        83.0,
        1982.4,
    )
    assert first["saturated"] is False
    assert (second["p50_ms"], second["p99_ms"]) == (None, None)


TRITON_TEXT = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="clickscore",version="6"} 10
nv_inference_request_success{model="clickscore",version="7"} 30
nv_inference_request_success{model="other",version="1"} 99
# TYPE nv_inference_count counter
nv_inference_count{model="clickscore",version="7"} 1200
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="clickscore",version="7"} 20
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="clickscore",version="7"} 400000
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="clickscore",version="7"} 80000
# TYPE nv_inference_compute_input_duration_us counter
nv_inference_compute_input_duration_us{model="clickscore",version="7"} 4000
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="clickscore",version="7"} 300000
# TYPE nv_inference_compute_output_duration_us counter
nv_inference_compute_output_duration_us{model="clickscore",version="7"} 16000
"""


def test_triton_times_per_request_over_an_interval() -> None:
    from stream.bench.latency_report import TritonTimes, triton_times

    now = triton_times(TRITON_TEXT, "clickscore")
    assert (now.requests, now.sequences, now.executions) == (40, 1200, 20)
    earlier = TritonTimes(requests=20, sequences=600, executions=10, request_us=200_000)
    per = now.minus(earlier).per_request_ms()
    assert per["request_ms"] == pytest.approx(10.0)  # 200 ms over 20 requests
    assert per["queue_ms"] == pytest.approx(4.0)
    assert per["compute_ms"] == pytest.approx(16.0)
    assert per["sequences_per_request"] == pytest.approx(30.0)
    assert per["sequences_per_execution"] == pytest.approx(60.0)  # two requests merged a batch
    assert TritonTimes().per_request_ms() == {}


def test_stage_quantiles_and_means_count_only_the_interval() -> None:
    from stream.bench.latency_report import (
        TRITON_CLIENT,
        histogram_mean_ms,
        stage_means_ms,
        stage_quantiles_ms,
    )

    def text(
        score_counts: tuple[int, int, int], client: tuple[int, float], score_sum: float
    ) -> str:
        fast, slow, total = score_counts
        return f"""# TYPE clickscore_window_stage_seconds histogram
clickscore_window_stage_seconds_bucket{{stage="score",le="0.1"}} {fast}
clickscore_window_stage_seconds_bucket{{stage="score",le="1.0"}} {slow}
clickscore_window_stage_seconds_bucket{{stage="score",le="+Inf"}} {total}
clickscore_window_stage_seconds_count{{stage="score"}} {total}
clickscore_window_stage_seconds_sum{{stage="score"}} {score_sum}
# TYPE {TRITON_CLIENT} histogram
{TRITON_CLIENT}_bucket{{le="1.0"}} {client[0]}
{TRITON_CLIENT}_bucket{{le="+Inf"}} {client[0]}
{TRITON_CLIENT}_count {client[0]}
{TRITON_CLIENT}_sum {client[1]}
"""

    # Before: one slow warm-up window. After: 100 more, all fast.
    before = text((0, 1, 1), (1, 0.9), score_sum=0.9)
    after = text((100, 101, 101), (11, 1.4), score_sum=0.9 + 100 * 0.05)
    assert stage_quantiles_ms(after, before, 0.99)["score"] == pytest.approx(99.0)
    assert stage_quantiles_ms(after, before, 1.0)["score"] == pytest.approx(100.0)
    assert stage_quantiles_ms(after, "", 1.0)["score"] == pytest.approx(1000.0)  # warm-up in
    assert histogram_mean_ms(after, before, TRITON_CLIENT) == pytest.approx(50.0)
    assert stage_means_ms(after, before)["score"] == pytest.approx(50.0)
    assert stage_means_ms(after, "")["score"] == pytest.approx(5900.0 / 101)  # warm-up in
    assert math.isnan(histogram_mean_ms(before, before, TRITON_CLIENT))


def test_serving_rows_json_ratios_and_per_core() -> None:
    import json

    from stream.bench.serving import ServingRow, ratios, rows_json

    rows = [
        ServingRow("ort_fp32", 64, 10, 2_000.0, 1.0),
        ServingRow("ort_int8", 64, 10, 3_000.0, 1.0),
        ServingRow("triton", 64, 10, 2_000.0, 2.0),
        ServingRow("torch", 16, 10, 500.0, 1.0),  # no ort_fp32 at 16: no ratio
    ]
    line = json.loads(json.dumps(rows_json(rows)))
    first = line["rows"][2]
    assert (first["runtime"], first["batch"], first["sequences_per_s_per_core"]) == (
        "triton",
        64,
        1_000.0,
    )
    against = ratios(rows)
    assert against[("ort_int8", 64)] == pytest.approx(1.5)
    assert against[("triton", 64)] == pytest.approx(0.5)  # per core: it was allowed two
    assert ("torch", 16) not in against


def test_triton_cores_read_from_the_served_config() -> None:
    from tritonclient.grpc import model_config_pb2

    from stream.bench.serving import triton_cores

    config = model_config_pb2.ModelConfig()
    config.instance_group.add(count=2, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
    assert triton_cores(config, cpus=16, threads_per_instance=1) == 2.0
    assert triton_cores(config, cpus=16, threads_per_instance=3) == 6.0
    assert triton_cores(config, cpus=2, threads_per_instance=4) == 2.0  # never over the machine


def test_timed_calls_warm_up_and_count_at_least_a_few() -> None:
    from stream.bench.serving import MIN_CALLS, WARMUP_CALLS, sample_inputs, timed_calls

    made: list[int] = []
    calls, elapsed, cpu = timed_calls(lambda: made.append(1), seconds=0.0)
    assert calls == MIN_CALLS and len(made) == WARMUP_CALLS + MIN_CALLS
    assert elapsed >= 0 and cpu >= 0
    x = sample_inputs(batch=4, length=64, features=36)
    assert x.tokens.shape == (4, 64, 6) and x.hashes.shape == (4, 64)
    assert x.features is not None and x.features.shape == (4, 36)
    assert sample_inputs(batch=2, length=64, features=0).features is None


def test_gpu_bench_providers_never_fall_back_silently() -> None:
    from stream.bench.gpu import providers_for

    cpu_only = ["CPUExecutionProvider"]
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("auto", cpu_only) == ("cpu", ("CPUExecutionProvider",))
    assert providers_for("auto", both)[1][0] == "CUDAExecutionProvider"
    assert providers_for("cuda:1", both) == ("cuda:1", tuple(both))
    assert providers_for("cpu", both) == ("cpu", ("CPUExecutionProvider",))
    with pytest.raises(RuntimeError, match="no CUDAExecutionProvider"):
        providers_for("cuda", cpu_only)
    with pytest.raises(ValueError):
        providers_for("tpu", both)
