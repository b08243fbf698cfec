"""A format-2 version's networks in eager PyTorch, in place of its ONNX Runtime sessions.

For `bench serving`'s torch rows: the modules trainer/export/onnx.py exports (ServedEncoder,
ServedNextEvent), loaded with the weights of the format-1 folder the version came from, are
wrapped to answer `run(None, feeds)` as an `onnxruntime.InferenceSession` does, so the
version's request path (`ServedVersion.score`) is the same for both runtimes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy.typing as npt
import torch


class _Output:
    def __init__(self, name: str) -> None:
        self.name = name


class TorchSession:
    """`run(None, feeds)` -> numpy outputs, of an eager module, in inference mode."""

    def __init__(self, module: torch.nn.Module, inputs: tuple[str, ...], outputs: tuple[str, ...]):
        self._module = module.eval()
        self._inputs = inputs
        self._outputs = [_Output(name) for name in outputs]

    def get_outputs(self) -> list[_Output]:
        return self._outputs

    def run(self, _: object, feeds: Mapping[str, npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        with torch.inference_mode():
            out = self._module(*(torch.from_numpy(feeds[name]) for name in self._inputs))
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def replace_with_torch(version: Any, source: Path, threads: int) -> None:
    """Swap `version`'s ONNX sessions for the same networks from `source`'s torch weights."""
    from trainer.export.onnx import (
        NEXT_EVENT_OUTPUTS,
        ServedEncoder,
        ServedNextEvent,
        encoder_outputs,
    )
    from trainer.fit.encoder import ClickscoreModel, ModelConfig
    from trainer.fit.next_event import NextEventConfig, NextEventModel

    torch.set_num_threads(threads)
    meta = json.loads((source / "model_config.json").read_text())
    if version.encoder is not None:
        weights = _weights(source, "weights.pt")
        model = ClickscoreModel(ModelConfig.from_dict(meta["model"]))
        model.load_state_dict(weights)
        surprise = version.served["anomaly"] == "encoder"
        module = ServedEncoder(model, surprise=surprise)
        version.encoder = TorchSession(module, ("TOKENS",), encoder_outputs(surprise))
    if version.next_event is not None:
        weights = _weights(source, "next_event.pt")
        net = NextEventModel(NextEventConfig.from_dict(meta["next_event"]["model"]))
        net.load_state_dict(weights)
        k = int(version.manifest.get("next_items", {}).get("k", 10))
        version.next_event = TorchSession(
            ServedNextEvent(net, k), ("ITEMS", "TYPES", "GAPS"), NEXT_EVENT_OUTPUTS
        )


def _weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    path = folder / name
    if not path.exists():
        # bench serving reports it as the torch row not measured (and why).
        raise FileNotFoundError(f"{path} is missing: the torch row needs the format-1 weights")
    state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu")
    return state


__all__ = ["TorchSession", "replace_with_torch"]
