"""Options beyond the paper, kept apart from the paper's modules.

``proxyformer/model.py``, ``cmie.py``, ``decoder.py`` and ``heads.py`` are the paper's
Sec. III. The options here help a small model trained from scratch on the synthetic set (the
``tiny-synthetic`` preset of the demo checkpoint); each subclasses a paper module and keeps its
parameter names:

- ``config.py``: ``ExtensionsConfig`` (the ``extensions`` section of the model config) and the
  migration of configs that held these options in their ``decoder`` section;
- ``decoder.py``: positional F_seg (``seg_pos``), position-carrying values (``value_pos``),
  text cross-attention (``text_attn``) and masked attention (``masked_attn``) in the decoder;
- ``selection.py``: the class path that reads the masks: mask pooling (``mask_pool``) and
  video-level query selection from the masks' geometry (``video_select``);
- ``model.py``: ``ExtendedProxyFormer`` and its builder, which ``build_proxyformer`` calls
  when any option is on.

Nothing here is imported eagerly: ``proxyformer.config`` imports ``extensions.config`` alone.
"""
