"""Batching: pad clips to a common size, renormalise boxes, tokenize the expressions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from proxyformer.text import encode_texts


class RVOSCollate:
    """Collate dataset items into model inputs and loss targets.

    Clips of different sizes are padded at the bottom/right with zeros (the mean colour after
    normalisation) to the largest in the batch; masks are padded with background and boxes are
    renormalised to the padded size, which is what the model sees.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: list[dict]) -> dict:
        if not items:
            raise ValueError("empty batch")
        lengths = {item["frames"].shape[0] for item in items}
        if len(lengths) != 1:
            raise ValueError(f"clips of one batch need the same number of frames, got {sorted(lengths)}")
        height = max(item["frames"].shape[-2] for item in items)
        width = max(item["frames"].shape[-1] for item in items)
        frames, targets = [], []
        for item in items:
            h, w = item["frames"].shape[-2:]
            pad = (0, width - w, 0, height - h)
            frames.append(F.pad(item["frames"], pad))
            boxes = item["boxes"].clone()
            boxes[:, 0::2] *= w / width
            boxes[:, 1::2] *= h / height
            target = {"masks": F.pad(item["masks"], pad), "boxes": boxes, "valid": item["valid"]}
            if "annotated" in item:  # A2D/JHMDB: only the centre frame has a mask
                target["annotated"] = item["annotated"]
            targets.append(target)
        text_ids, text_mask = encode_texts(self.tokenizer, [item["expression"] for item in items])
        return {
            "frames": torch.stack(frames),  # (B, T, 3, H, W)
            "text_ids": text_ids,
            "text_mask": text_mask,
            "targets": targets,
            "meta": [
                {k: item[k] for k in ("video", "exp_id", "expression", "frame_names", "orig_size")}
                | {"size": tuple(item["frames"].shape[-2:])}
                for item in items
            ],
        }
