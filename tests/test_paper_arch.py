"""The paper's architecture through the whole deployment path, in CI.

``paper-mini`` has the paper presets' layer structure (Video-Swin stages, K=4 CMIE modules,
3 DETR-style decoder layers, the paper's heads, 8 heads, N=5) at a width that exports in
seconds. With random weights it goes through export (FP32 parity at unseen shapes under the
maximum-error rule; the FP16 graph under the same rule), INT8 calibration for both targets, and
the runtime, which must agree with PyTorch eager on the masks and the chosen query.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from proxyformer.config import get_preset
from runtime.manifest import Manifest

pytestmark = pytest.mark.slow

EXPRESSIONS = ["the small red circle moving left", "the square above the green triangle"]


def test_paper_mini_has_the_paper_structure():
    from proxyformer.decoder import DecoderLayer
    from proxyformer.heads import PredictionHeads
    from proxyformer.model import ProxyFormer, build_proxyformer

    config, paper = get_preset("paper-mini"), get_preset("paper-swin-t")
    assert not config.extensions.enabled
    assert config.cmie == paper.cmie.__class__(**{**paper.cmie.__dict__, "ffn_dim": 256})
    assert (config.decoder.num_layers, config.decoder.num_heads) == (3, 8)
    assert config.num_queries == paper.num_queries and config.text_fusion == paper.text_fusion
    model = build_proxyformer(config)
    assert type(model) is ProxyFormer and type(model.heads) is PredictionHeads
    assert all(type(layer) is DecoderLayer for layer in model.decoder.layers)
    assert type(model.backbone).__name__ == "VideoSwin" and len(model.cmie.layers) == 4


def test_fp32_and_fp16_parity_under_the_maximum_rule(paper_bundle):
    """The export checked both graphs at two (T, E, L) it did not trace at; the manifest
    records the maximum errors, which are far inside the tolerances."""
    manifest = Manifest.load(paper_bundle)
    fp32 = manifest.variant("video", "fp32")["parity"]
    assert fp32["tolerance"]["quantile"] == 1.0
    assert fp32["max_abs_error"]["pred_masks"] < 1e-3, fp32
    fp16 = manifest.variant("video", "fp16")["parity"]
    assert fp16["tolerance"]["quantile"] == 1.0  # no masked attention: the maximum
    assert fp16["max_abs_error"]["pred_logits"] < 2e-2, fp16


def test_export_folds_what_tensorrt_cannot_parse_and_times_its_stages(paper_bundle):
    """Video-Swin traces SplitToSequence/SequenceAt pairs (and CastLike), which the TensorRT
    parser refuses; the export's constant folding (``export.torch_export.fold_constants``, in
    place of the exporter's slow optimizer) turns them into Split and Cast. Every stage's
    seconds are in the manifest."""
    manifest = Manifest.load(paper_bundle)
    report = manifest.data["tensorrt_compatibility"]
    assert report["ok"], report["problems"]
    for precision in ("fp32", "fp16"):
        ops = set(manifest.variant("video", precision)["op_types"])
        assert not ops & {"SplitToSequence", "SequenceAt", "CastLike"}, precision
    seconds = manifest.data["export_seconds"]
    stages = {"load model", "torch.onnx.export video", "finish video (onnxslim, checker)",
              "parity fp32", "fp16 conversion video", "parity fp16", "total"}  # fmt: skip
    assert stages <= set(seconds), seconds
    assert all(value >= 0 for value in seconds.values())
    assert seconds["total"] >= max(value for key, value in seconds.items() if key != "total")


def pytorch_reference(bundle, frames: np.ndarray):
    """PyTorch eager outputs and chosen queries of the model the bundle came from."""
    from export.onnx_export import bundle_model
    from proxyformer.text import encode_texts, load_tokenizer
    from runtime.selection import select_queries

    manifest = Manifest.load(bundle)
    model = bundle_model(manifest)
    tokenizer = load_tokenizer(model.config, bundle / "tokenizer.json")
    ids, mask = encode_texts(tokenizer, EXPRESSIONS)
    size = tuple(manifest.preprocessing["size"])
    resized = np.stack([cv2.resize(f, size[::-1], interpolation=cv2.INTER_LINEAR) for f in frames])
    clip = model.normalize(torch.from_numpy(resized).permute(0, 3, 1, 2))[None]
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        levels = [lvl.expand(len(EXPRESSIONS), *lvl.shape[1:]) for lvl in model.encode_frames(clip)]
        out = model.decode(levels, text, mask, size, aux=False)
    logits = out["pred_logits"].numpy()
    return logits, select_queries(logits)[0]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_runtime_agrees_with_pytorch(paper_bundle, clip, precision):
    """The runtime (onnxruntime) picks PyTorch's query and segments the same pixels; FP16 may
    pick another query only where PyTorch's two best scores are closer than FP16's error."""
    from runtime.predictor import RVOSPredictor

    logits, best = pytorch_reference(paper_bundle, clip)
    predictor = RVOSPredictor(paper_bundle, backend="onnxruntime", precision=precision)
    result = predictor.segment(clip, EXPRESSIONS)
    fp32 = RVOSPredictor(paper_bundle, backend="onnxruntime").segment(clip, EXPRESSIONS)
    probabilities = np.sort(1 / (1 + np.exp(-logits.astype(np.float64))).mean(1), axis=1)
    margin = probabilities[:, -1] - probabilities[:, -2]
    for e in range(len(EXPRESSIONS)):
        if precision == "fp32" or margin[e] > 2e-3:
            assert result.queries[e, 0] == best[e], (e, margin[e])
        if result.queries[e, 0] == best[e]:
            assert iou(result.masks[e], fp32.masks[e]) > (0.99 if precision == "fp32" else 0.9)


def test_int8_both_targets_agree_with_fp32(paper_int8, clip):
    """Both INT8 forms were written with their agreement against FP32 on held-out clips, and
    run in the runtime (the Q/DQ TensorRT form runs in onnxruntime too)."""
    from runtime.predictor import RVOSPredictor

    manifest = Manifest.load(paper_int8)
    fp32 = RVOSPredictor(paper_int8, backend="onnxruntime").segment(clip, EXPRESSIONS)
    for target in ("tensorrt", "cpu"):
        entry = manifest.variant("video", f"int8-{target}")
        agreement = entry["agreement_vs_fp32"]
        assert agreement["tracks"] > 0 and agreement["mask_iou"] >= 0.5, (target, agreement)
        result = RVOSPredictor(paper_int8, backend="onnxruntime",
                               precision=f"int8-{target}").segment(clip, EXPRESSIONS)  # fmt: skip
        assert result.masks.shape == fp32.masks.shape
        same = result.queries[:, 0] == fp32.queries[:, 0]
        assert all(iou(result.masks[e], fp32.masks[e]) >= 0.5 for e in np.flatnonzero(same))
