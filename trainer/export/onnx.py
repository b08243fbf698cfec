"""The served networks as ONNX graphs: a dynamic batch, the fixed sequence length.

Each graph is exactly what stream/serving/version.py runs. Padding is masked at full length
(never sliced off), the anomaly calibration stays outside (the encoder graph outputs the raw
surprise) and next items come out as the network's top K ids, which the version's item
vocabulary names in numpy. The legacy TorchScript-based exporter is used: the dynamo exporter
needs onnxscript, which the project does not install.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

from trainer.fit.encoder import ClickscoreModel
from trainer.fit.next_event import NextEventModel

OPSET = 17  # LayerNormalization and ScatterElements(reduction=add) are core ops from here
ENCODER_INPUTS = ("TOKENS",)
NEXT_EVENT_INPUTS = ("ITEMS", "TYPES", "GAPS")
EVENT_TYPE, GAP = 0, 4  # TOKENS fields the next-event network reads


class ServedEncoder(nn.Module):
    """tokens (B, L, F) -> what the version serves from the encoder: churn and purchase
    probabilities (B,) from one pass, the raw surprise (B,) from a second, masked pass."""

    def __init__(self, model: ClickscoreModel, *, surprise: bool, scores: bool = True) -> None:
        super().__init__()
        if not (scores or surprise):
            raise ValueError("an encoder graph with no output")
        self.model = model
        self.with_scores = scores
        self.with_surprise = surprise

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs: tuple[torch.Tensor, ...] = ()
        if self.with_scores:
            out = self.model.forward(tokens)
            outputs = (torch.sigmoid(out["churn"].float()), torch.sigmoid(out["purchase"].float()))
        if self.with_surprise:
            outputs = (*outputs, self.model.surprise(tokens).float())
        return outputs


def encoder_outputs(surprise: bool, scores: bool = True) -> tuple[str, ...]:
    return ("CHURN", "PURCHASE") * scores + ("SURPRISE",) * surprise


class ServedNextEvent(nn.Module):
    """items, types, gaps (B, L) -> top-k item ids (B, k), their probabilities, P(purchase)."""

    def __init__(self, model: NextEventModel, k: int) -> None:
        super().__init__()
        self.model = model
        self.k = k

    def forward(
        self, items: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.top_items(items, types, gaps, self.k)


NEXT_EVENT_OUTPUTS = ("TOP_IDS", "TOP_PROBS", "NEXT_PURCHASE")


def _export(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
) -> bytes:
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in (*inputs, *outputs)}
    # nn.TransformerEncoderLayer's fused fast path is one opaque kernel no exporter maps.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(
                module.eval(),
                example,
                buffer,  # type: ignore[arg-type]  # a file object is accepted too
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_axes=axes,
                opset_version=OPSET,
                # Folding would store a transposed copy of the tied item embeddings (2.6 MB);
                # ORT folds it in memory when the session loads instead.
                do_constant_folding=False,
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return buffer.getvalue()


def export_encoder(
    model: ClickscoreModel, path: Path, *, scores: bool = True, surprise: bool
) -> None:
    """Only the passes the served outputs need: `scores` (churn, purchase), `surprise`."""
    config = model.config
    example = torch.ones((2, config.sequence_length, len(config.field_sizes)), dtype=torch.long)
    module = ServedEncoder(model, scores=scores, surprise=surprise)
    names = encoder_outputs(scores=scores, surprise=surprise)
    path.write_bytes(_export(module, (example,), ENCODER_INPUTS, names))


def export_next_event(model: NextEventModel, path: Path, k: int) -> None:
    example = torch.ones((2, model.config.sequence_length), dtype=torch.long)
    module = ServedNextEvent(model, min(k, model.config.known_items))
    graph = _export(module, (example, example, example), NEXT_EVENT_INPUTS, NEXT_EVENT_OUTPUTS)
    path.write_bytes(graph)


def quantize(path: Path) -> None:
    """int8 dynamic quantisation of the weights (MatMul/Gemm), in place."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = path.with_suffix(".fp32.onnx")
    path.rename(fp32)
    try:
        quantize_dynamic(fp32, path, weight_type=QuantType.QInt8)
    finally:
        fp32.unlink()
