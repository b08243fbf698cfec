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


def test_the_served_version_runs_the_exported_entry_and_takes_the_workers_features() -> None:
    from stream.contract.features import FeatureSchema
    from stream.contract.tokenizer import Vocabulary
    from trainer.export import TRITON_ENTRY, read_meta

    served = max((p for p in MODEL.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert served.name == "6"
    # The version folder holds a copy of trainer/triton_model.py, not a fork of it.
    assert (served / "model.py").read_text() == TRITON_ENTRY.read_text()
    schema = FeatureSchema(Vocabulary.from_dict(read_meta(served)["vocabulary"]))
    assert read_meta(served)["feature_head"]["schema"]["version"] == schema.version
    for name in ("config.pbtxt", "config.gpu.pbtxt"):
        config = parse(name)
        [features] = [i for i in config.input if i.name == "FEATURES"]
        assert list(features.dims) == [schema.count] and features.optional
        assert features.data_type == model_config_pb2.TYPE_FP32
        assert config.parameters["feature_schema"].string_value == schema.version


def test_every_version_folder_answers_every_output_the_shared_config_declares() -> None:
    """One config serves every version, so a rollback to an older folder must still answer
    each declared output (Triton refuses a response without a requested one)."""
    import ast

    declared = {o.name for o in parse("config.pbtxt").output}
    folders = sorted(p for p in MODEL.iterdir() if p.is_dir())
    assert folders
    for folder in folders:
        tree = ast.parse((folder / "model.py").read_text())
        answered: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
                names = {t.id for t in node.targets if isinstance(t, ast.Name)}
                if names & {"OUTPUTS", "NEXT_OUTPUTS"}:
                    answered |= {ast.literal_eval(e) for e in node.value.elts}
        assert declared <= answered, (folder.name, sorted(declared - answered))
