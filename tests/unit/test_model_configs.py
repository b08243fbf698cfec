"""The served model's Triton configs, parsed as Triton parses them (its protobuf schema)."""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from stream.settings import PROJECT_ROOT, Settings

MODEL = PROJECT_ROOT / "model_repo" / "clickscore"


def parse(name: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse((MODEL / name).read_text(), model_config_pb2.ModelConfig())


def test_the_gpu_config_batches_what_fills_a_gpu_and_compiles_nothing_by_default() -> None:
    config = parse("config.gpu.pbtxt")
    assert config.max_batch_size >= 4096
    preferred = list(config.dynamic_batching.preferred_batch_size)
    assert preferred == sorted(preferred) and preferred[-1] <= config.max_batch_size
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert config.parameters["torch_compile"].string_value == "false"


def test_both_configs_declare_the_same_interface() -> None:
    cpu, gpu = parse("config.pbtxt"), parse("config.gpu.pbtxt")
    assert cpu.input == gpu.input and cpu.output == gpu.output
    # The worker's default request fits the CPU config the local stack serves.
    assert cpu.max_batch_size >= Settings.model_fields["batch_size"].default
