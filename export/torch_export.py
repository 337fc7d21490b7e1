"""``torch.onnx.export`` of one graph: profiles of the dynamic axes, dummy inputs, the export.

- ``Profile``: MIN:OPT:MAX of one dynamic axis (T frames, E expressions, L tokens).
- ``export_sizes``: the concrete (T, E, L) the graphs are traced at.
- ``make_inputs``: a graph's inputs at concrete axis sizes (also the parity check's inputs).
- ``export_graph``: the dynamo exporter with bounded dynamic axes, then a check that no axis
  meant to be dynamic came out as a constant.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from proxyformer.model import ProxyFormer
from runtime.manifest import TensorSpec

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # opset 23's Attention op is avoided: TensorRT 10 parses SDPA as MatMul/Softmax
DUMMY_TEXTS = (
    "the small red circle moving left",
    "the square above the green triangle",
    "the big blue diamond that stays still",
)
PAD_TOKEN_ID = 1  # RoBERTa <pad>


@dataclass(frozen=True)
class Profile:
    """min/opt/max of one dynamic axis."""

    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str | tuple | Profile, what: str) -> Profile:
        """``"MIN:OPT:MAX"``, ``"N"`` (static), a tuple or a ``Profile``; ``what`` names the
        argument in the error."""
        if isinstance(text, Profile):
            return text
        parts = [int(p) for p in text.split(":")] if isinstance(text, str) else list(text)
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
            raise ValueError(
                f"{what} must be MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, got {text!r}"
            )
        return cls(*parts)

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


def export_sizes(profiles: dict[str, Profile]) -> dict[str, int]:
    """Distinct sizes > 1 inside each profile where the ranges allow it, so the exporter
    neither specialises an axis to 0/1 nor mistakes two axes of equal size for one."""
    taken: set[int] = set()
    sizes = {}
    for axis in ("T", "E", "L"):
        profile = profiles[axis]
        preferred = [profile.opt, *range(profile.min, profile.max + 1)]
        candidates = [v for v in preferred if v > 1 and v not in taken] or [profile.opt]
        sizes[axis] = candidates[0]
        taken.add(sizes[axis])
    return sizes


def make_inputs(
    specs: list[TensorSpec],
    sizes: dict[str, int],
    tokenizer,
    model: ProxyFormer,
    seed: int,
) -> dict[str, np.ndarray]:
    """Inputs of one graph at concrete axis sizes: random frames, real tokenized expressions
    padded or cut to L (the first one padded when E > 1, so masking is exercised)."""
    rng = np.random.default_rng(seed)
    expressions, length = sizes["E"], sizes["L"]
    texts = [DUMMY_TEXTS[i % len(DUMMY_TEXTS)] for i in range(expressions)]
    ids = np.full((expressions, length), PAD_TOKEN_ID, dtype=np.int64)
    mask = np.zeros((expressions, length), dtype=np.int64)
    for row, encoding in enumerate(tokenizer.encode_batch(texts)):
        tokens = encoding.ids[:length]
        if row == 0 and expressions > 1 and length > 2:
            tokens = tokens[: max(2, length // 2)]
        ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = tuple(d if isinstance(d, int) else sizes[d] for d in spec.shape)
        if spec.name == "frames":
            if spec.dtype == "uint8":
                feeds[spec.name] = rng.integers(0, 256, shape, dtype=np.uint8)
            else:
                feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
        elif spec.name == "input_ids":
            feeds[spec.name] = ids
        elif spec.name == "attention_mask":
            feeds[spec.name] = mask
        elif spec.name == "text_features":
            with torch.no_grad():
                feats = model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask))
            feeds[spec.name] = feats.numpy()
        elif spec.name.startswith("level"):
            # The split video decoder's backbone levels: random maps of unit scale, as the
            # levels' GroupNorm leaves them.
            feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            raise KeyError(f"no dummy input for {spec.name}")
    return feeds


def run_torch(
    module: torch.nn.Module, feeds: dict[str, np.ndarray], names
) -> dict[str, np.ndarray]:
    """Run a graph module eagerly on numpy ``feeds`` (in their order); outputs by ``names``."""
    with torch.no_grad():
        out = module(*(torch.from_numpy(feeds[k]) for k in feeds))
    out = out if isinstance(out, tuple) else (out,)
    return {name: tensor.numpy() for name, tensor in zip(names, out)}


def export_graph(
    module: torch.nn.Module,
    feeds: dict[str, np.ndarray],
    specs: tuple[list[TensorSpec], list[TensorSpec]],
    profiles: dict[str, Profile],
    path: Path,
    opset: int,
    optimize: bool = True,
) -> None:
    """``torch.onnx.export`` with the dynamo exporter and bounded dynamic axes.

    ``optimize`` runs ``fold_constants`` (the exporter's optimizer without its rewrite rules)
    in place of the exporter's own optimizer; onnxslim simplifies the rest afterwards. False
    leaves the graph as traced.

    An axis whose profile has MIN = MAX is exported static. Afterwards every input axis that
    should be dynamic is checked in the graph: the exporter can specialise an axis the model
    branches on (Video-Swin adapts its temporal window when T <= the window's T) and that
    would otherwise surface only as a shape error at run time.
    """
    inputs, outputs = specs
    dims = {
        axis: torch.export.Dim(axis, min=profile.min, max=profile.max)
        for axis, profile in profiles.items()
        if profile.min < profile.max
    }
    dynamic_shapes = {
        spec.name: {i: dims[d] for i, d in enumerate(spec.shape) if d in dims} for spec in inputs
    }
    started = time.perf_counter()
    with warnings.catch_warnings():
        # Two inputs sharing an axis (E, L) make the exporter say it reuses the name: benign.
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares")
        program = torch.onnx.export(
            module,
            tuple(torch.from_numpy(feeds[spec.name]) for spec in inputs),
            input_names=[spec.name for spec in inputs],
            output_names=[spec.name for spec in outputs],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            optimize=False,  # fold_constants below: the same graph in seconds, not minutes
            verbose=False,
        )
    if optimize:
        fold_constants(program.model)
    # Weights beside the graph; finish_graph decides the final layout.
    program.save(str(path), external_data=True)
    log.info("exported %s in %.1f s", path.name, time.perf_counter() - started)
    check_dynamic_axes(path, inputs, dims)


def fold_constants(model) -> None:
    """The dynamo exporter's ONNX optimizer without its pattern-rewrite rules, in place on an
    ``onnx_ir.Model``: function inlining, constant folding (which also turns the traced
    ``SplitToSequence``/``SequenceAt`` pairs TensorRT cannot parse into ``Split``), dead code
    removal, constants lifted to deduplicated initializers, common subexpressions merged.

    Why not ``torch.onnx.export(optimize=True)``: on paper-swin-t at 360x640 its rewrite
    rules' pattern matching took 466 of the video graph's 570 export seconds, and after
    onnxslim the graph they give differs from this one by 4 of 4,377 nodes (3 Reshape, 1
    Squeeze; docs/deployment.md, "Export time"). Folding takes 2 s.
    """
    import onnx_ir as ir
    from onnx_ir.passes import common
    from onnxscript.optimizer import fold_constants_ir

    class FoldConstants(ir.passes.InPlacePass):
        def call(self, model: ir.Model) -> ir.passes.PassResult:
            # Node-level shape inference on, as the exporter's optimizer runs it.
            return fold_constants_ir(model, onnx_shape_inference=True)

    ir.passes.Sequential(
        common.InlinePass(),
        ir.passes.PassManager(
            [FoldConstants(), common.RemoveUnusedNodesPass()], steps=2, early_stop=True
        ),
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),  # an output that is also an input or initializer
        common.NameFixPass(),  # unique value and node names
    )(model)


def check_dynamic_axes(path: Path, inputs: list[TensorSpec], dims: dict) -> None:
    """Raise when an input axis meant to be dynamic came out of the exporter as a constant."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    for value in graph.input:
        spec = next((s for s in inputs if s.name == value.name), None)
        if spec is None:
            continue
        for index, (axis, dim) in enumerate(zip(spec.shape, value.type.tensor_type.shape.dim)):
            if axis in dims and not dim.dim_param:
                hint = (
                    " Video-Swin shrinks its temporal window when T <= the window's T (8), so "
                    "its graphs need --frames with MIN >= 9, or a static T (MIN = OPT = MAX)."
                    if axis == "T"
                    else ""
                )
                raise ValueError(
                    f"the exporter fixed axis {axis} of input {value.name!r} (dim {index}) to "
                    f"{dim.dim_value}: the model's code branches on it within the profile "
                    f"{dims[axis].min}..{dims[axis].max}.{hint}"
                )
