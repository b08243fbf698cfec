"""The served model's Triton configs, parsed as Triton parses them (its protobuf schema)."""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from stream.settings import PROJECT_ROOT, Settings

MODEL = PROJECT_ROOT / "model_repo" / "clickscore"


def parse(name: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse((MODEL / name).read_text(), model_config_pb2.ModelConfig())


def test_the_gpu_config_batches_what_fills_a_gpu() -> None:
    config = parse("config.gpu.pbtxt")
    assert config.max_batch_size >= 4096
    preferred = list(config.dynamic_batching.preferred_batch_size)
    assert preferred == sorted(preferred) and preferred[-1] <= config.max_batch_size
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]


def test_both_configs_name_the_one_clickscore_backend() -> None:
    assert parse("config.pbtxt").backend == parse("config.gpu.pbtxt").backend == "clickscore"


def test_both_configs_declare_the_same_interface() -> None:
    cpu, gpu = parse("config.pbtxt"), parse("config.gpu.pbtxt")
    assert cpu.input == gpu.input and cpu.output == gpu.output
    # The worker's default request fits the CPU config the local stack serves.
    assert cpu.max_batch_size >= Settings.model_fields["batch_size"].default


def test_the_served_version_is_data_only_and_takes_the_workers_features() -> None:
    from stream.contract.features import FeatureSchema
    from stream.contract.tokenizer import Vocabulary
    from trainer.export import read_meta

    served = max((p for p in MODEL.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert served.name == "7"
    meta = read_meta(served)
    assert meta["format"] == 2 and meta["migrated_from"] == 6
    # No code and no torch weights: the serving code exists once, in stream/serving/.
    names = {p.name for p in served.iterdir()}
    assert names == {"model_config.json", "next_event.onnx", "items.json", "reference.json"}
    schema = FeatureSchema(Vocabulary.from_dict(meta["vocabulary"]))
    assert meta["feature_head"]["schema"]["version"] == schema.version
    for name in ("config.pbtxt", "config.gpu.pbtxt"):
        config = parse(name)
        [features] = [i for i in config.input if i.name == "FEATURES"]
        assert list(features.dims) == [schema.count] and features.optional
        assert features.data_type == model_config_pb2.TYPE_FP32
        assert config.parameters["feature_schema"].string_value == schema.version


def test_every_version_folder_is_format_2_and_the_backend_answers_every_declared_output() -> None:
    """One config and one backend serve every version, so a rollback to an older folder must
    still load (format 2) and answer each declared output (Triton refuses a response
    without a requested one)."""
    import json

    from stream.serving.backend import OUTPUTS

    declared = {o.name for o in parse("config.pbtxt").output}
    assert declared <= set(OUTPUTS), sorted(declared - set(OUTPUTS))
    folders = sorted(p for p in MODEL.iterdir() if p.is_dir())
    assert folders
    for folder in folders:
        assert json.loads((folder / "model_config.json").read_text())["format"] == 2, folder
        assert not [p.name for p in folder.iterdir() if p.suffix in (".py", ".pt")], folder
