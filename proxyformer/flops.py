"""FLOP counting that gives the same total on every torch release.

``torch.utils.flop_counter.FlopCounterMode`` counts an operator only when its release has a
formula for it. ``F.scaled_dot_product_attention`` is not one operator: torch dispatches it to
one of several fused kernels (flash, memory-efficient, cuDNN, the CPU flash kernel, ...), or to
the math path, which decomposes into ``bmm`` that every release counts. Which fused kernels have
a formula changes between releases (torch 2.14 has none for the CPU flash kernel, so the
paper-swin-t CMIE counted 179.9 GMACs there and 238.2 on 2.15). ``flop_counter`` therefore
supplies its own formula for every fused attention kernel, computed from the operand shapes
exactly as the math path's two ``bmm`` are counted, and overrides whatever the release has, so
the fused and the math path, and every release, give the same count.

Unit: FLOPs, two per multiply-accumulate, like ``FlopCounterMode``. Attention of queries
(..., Lq, Dq) over keys (..., Lk, Dq) and values (..., Lk, Dv) is
``q @ kᵀ`` (Lq·Lk·Dq MACs) plus ``softmax(.) @ v`` (Lq·Lk·Dv MACs) per batch-and-head, so
``2 · B·H · Lq·Lk · (Dq + Dv)`` FLOPs. Masks, causality, the softmax and the scaling are not
counted (the math path's ``bmm`` do not see them either).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

# Fused attention kernels whose first three arguments are query, key and value laid out
# (B, H, L, D). ``_scaled_dot_product_attention_math`` is absent on purpose: it is composite, so
# it reaches the counter as the ``bmm`` it is made of, which are counted already.
FUSED_ATTENTION = (
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
    "_scaled_dot_product_attention_math_for_mps",
)
# Their backward kernels take (grad_out, query, key, value, ...).
FUSED_ATTENTION_BACKWARD = (
    "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_cudnn_attention_backward",
    "_scaled_dot_product_fused_attention_overrideable_backward",
)


def attention_flops(query: Sequence[int], key: Sequence[int], value: Sequence[int]) -> int:
    """FLOPs (2 per MAC) of ``softmax(q @ kᵀ) @ v`` from the three operand shapes.

    The leading dimensions of the query (batch and heads) count the independent attentions;
    keys and values may have fewer heads (grouped-query attention broadcasts them).
    """
    if len(query) < 2 or len(key) < 2 or len(value) < 2:
        raise ValueError(
            f"attention operands need at least 2 dimensions (..., L, D), got query {tuple(query)}, "
            f"key {tuple(key)}, value {tuple(value)}"
        )
    *batch, length_q, dim_qk = query
    length_k, dim_v = key[-2], value[-1]
    if key[-1] != dim_qk or value[-2] != length_k:
        raise ValueError(
            "attention operands do not fit together: expected query (..., Lq, D), key (..., Lk, D), "
            f"value (..., Lk, Dv), got query {tuple(query)}, key {tuple(key)}, value {tuple(value)}"
        )
    return 2 * math.prod(batch) * length_q * length_k * (dim_qk + dim_v)


def _forward_formula(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return attention_flops(query, key, value)


def _backward_formula(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    # The gradients of both products are two products each (dS = dO·vᵀ and dv = Pᵀ·dO, then
    # dq = dS·k and dk = dSᵀ·q): twice the forward, as autograd of the math path's bmm counts.
    return 2 * attention_flops(query, key, value)


def attention_rules() -> dict:
    """``custom_mapping`` for ``FlopCounterMode``: every fused attention kernel of this torch."""
    rules = {}
    for names, formula in (
        (FUSED_ATTENTION, _forward_formula),
        (FUSED_ATTENTION_BACKWARD, _backward_formula),
    ):
        for name in names:
            if hasattr(torch.ops.aten, name):  # kernels come and go between releases
                rules[getattr(torch.ops.aten, name)] = formula
    return rules


def flop_counter(depth: int = 2, display: bool = False) -> FlopCounterMode:
    """A ``FlopCounterMode`` whose attention count does not depend on the torch release.

    ``custom_mapping`` takes precedence over the release's own registry, so a formula torch adds
    later for one of these kernels is replaced by the same shape rule, never added to it.
    """
    return FlopCounterMode(depth=depth, display=display, custom_mapping=attention_rules())
