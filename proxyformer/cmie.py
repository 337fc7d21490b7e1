"""Cross-Modality Interaction Encoding (paper Sec. III-A, Eq. 1-5).

K stacked modules update video tokens F_v and proxy queries Q together:

    F_v^k, Q^k = CMIE(F_v^{k-1}, F_t, Q^{k-1})                                         (1)

Each module has two blocks that both read the previous module's state, as the paper writes
them (the video block reads Q^{k-1}, the proxy block reads F_v^{k-1}):

- Proxy conditioned video encoding: decoupled spatial + temporal self-attention on the video
  (Eq. 2), then proxy-to-video cross-attention, spatial per frame and temporal against the
  frame-pooled proxies (Eq. 3).
- Visual-language conditioned proxy encoding: text-to-proxy cross-attention with the original
  text features F_t at every module (Eq. 4), then video-to-proxy cross-attention, spatial per
  frame and temporal against the spatially pooled video (Eq. 5).

The paper's "replicate HW (or N) times" for the temporal branches is computed without the
copies: every query token attends to the same T pooled keys, which is the same arithmetic.

Each equation's residual sums are kept as written; a LayerNorm follows each sum (post-norm,
as in ReferFormer's encoder) and an FFN follows each block, so the residual stream keeps its
scale across K modules. Ablation switches (``CMIEConfig``): ``mode="full"`` is CMIE* (joint
spatio-temporal attention), ``use_p2v=False`` drops Eq. 3, ``use_proxy=False`` replaces the
proxies by direct text-to-video cross-attention (Table VIII row b).
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import nn

from .config import CMIEConfig
from .layers import FFN, Attention


class CMIELayer(nn.Module):
    """One CMIE module, Eq. 2-5."""

    def __init__(self, dim: int, config: CMIEConfig) -> None:
        super().__init__()
        heads, drop = config.num_heads, config.dropout
        self.mode, self.use_p2v, self.use_proxy = config.mode, config.use_p2v, config.use_proxy
        decoupled = self.mode == "decoupled"

        # Eq. 2: video self-attention (spatial and temporal, or joint for CMIE*).
        self.sa_s = Attention(dim, heads, drop)
        self.sa_t = Attention(dim, heads, drop) if decoupled else None
        self.norm_sa = nn.LayerNorm(dim)
        # Eq. 3: proxy-to-video (or text-to-video without proxies).
        if not self.use_proxy:
            self.t2v = Attention(dim, heads, drop)
            self.norm_t2v = nn.LayerNorm(dim)
        elif self.use_p2v:
            self.p2v_s = Attention(dim, heads, drop)
            self.p2v_t = Attention(dim, heads, drop) if decoupled else None
            self.norm_p2v = nn.LayerNorm(dim)
        self.ffn_video = FFN(dim, config.ffn_dim, drop)
        # Eq. 4 and 5: text-to-proxy, video-to-proxy.
        if self.use_proxy:
            self.t2p = Attention(dim, heads, drop)
            self.norm_t2p = nn.LayerNorm(dim)
            self.v2p_s = Attention(dim, heads, drop)
            self.v2p_t = Attention(dim, heads, drop) if decoupled else None
            self.norm_v2p = nn.LayerNorm(dim)
            self.ffn_proxy = FFN(dim, config.ffn_dim, drop)

    def forward(
        self,
        video: torch.Tensor,  # F_v^{k-1}: (B, T, S, C), S tokens per frame
        proxy: torch.Tensor,  # Q^{k-1}: (B, T, N, C)
        text: torch.Tensor,  # F_t: (B, L, C)
        text_mask: torch.Tensor,  # (B, L) bool, True = real token
        space_pos: torch.Tensor,  # (S, C) 2-D sine + level embedding
        time_pos: torch.Tensor,  # (T, C) sine over frame index
    ) -> tuple[torch.Tensor, torch.Tensor]:
        new_video = self.encode_video(video, proxy, text, text_mask, space_pos, time_pos)
        if not self.use_proxy:
            return new_video, proxy
        new_proxy = self.encode_proxy(video, proxy, text, text_mask, space_pos, time_pos)
        return new_video, new_proxy

    # -- Proxy conditioned video encoding ------------------------------------------------

    def encode_video(self, video, proxy, text, text_mask, space_pos, time_pos) -> torch.Tensor:
        B, T, S, _ = video.shape
        if self.mode == "decoupled":
            # Eq. 2: spatial MHSA among tokens of a frame, temporal MHSA along each token's frames.
            v_s = rearrange(video, "b t s c -> (b t) s c")
            v_s = v_s + self.sa_s(v_s, v_s, query_pos=space_pos, key_pos=space_pos)
            v_t = rearrange(video, "b t s c -> (b s) t c")
            v_t = v_t + self.sa_t(v_t, v_t, query_pos=time_pos, key_pos=time_pos)
            video_hat = rearrange(v_s, "(b t) s c -> b t s c", b=B) + rearrange(
                v_t, "(b s) t c -> b t s c", b=B
            )
        else:  # CMIE*: one MHSA over all T*S tokens
            pos = _space_time_pos(space_pos, time_pos)  # (T*S, C)
            v = rearrange(video, "b t s c -> b (t s) c")
            v = v + self.sa_s(v, v, query_pos=pos, key_pos=pos)
            video_hat = rearrange(v, "b (t s) c -> b t s c", t=T)
        video_hat = self.norm_sa(video_hat)

        if not self.use_proxy:  # Table VIII (b): text attends into the video directly
            v = rearrange(video_hat, "b t s c -> b (t s) c")
            v = v + self.t2v(v, text, key_padding_mask=text_mask)
            video_out = self.norm_t2v(rearrange(v, "b (t s) c -> b t s c", t=T))
        elif not self.use_p2v:  # Table IV (4): CMIE w/o P2V
            video_out = video_hat
        elif self.mode == "decoupled":
            # Eq. 3, spatial: each frame's tokens query that frame's N proxies.
            v_s = rearrange(video_hat, "b t s c -> (b t) s c")
            p_s = rearrange(proxy, "b t n c -> (b t) n c")
            v_s = v_s + self.p2v_s(v_s, p_s, query_pos=space_pos)
            # Eq. 3, temporal: each token's frames query the frame-pooled proxies Q_t.
            pooled = proxy.mean(dim=2)  # (B, T, C)
            v_t = rearrange(video_hat, "b t s c -> b (t s) c")
            query_time = repeat(time_pos, "t c -> (t s) c", s=S)
            v_t = v_t + self.p2v_t(v_t, pooled, query_pos=query_time, key_pos=time_pos)
            video_out = self.norm_p2v(
                rearrange(v_s, "(b t) s c -> b t s c", b=B)
                + rearrange(v_t, "b (t s) c -> b t s c", t=T)
            )
        else:  # CMIE*: every video token queries all T*N proxies
            v = rearrange(video_hat, "b t s c -> b (t s) c")
            p = rearrange(proxy, "b t n c -> b (t n) c")
            proxy_time = repeat(time_pos, "t c -> (t n) c", n=proxy.shape[2])
            v = v + self.p2v_s(
                v, p, query_pos=_space_time_pos(space_pos, time_pos), key_pos=proxy_time
            )
            video_out = self.norm_p2v(rearrange(v, "b (t s) c -> b t s c", t=T))
        return self.ffn_video(video_out)

    # -- Visual-language conditioned proxy encoding --------------------------------------

    def encode_proxy(self, video, proxy, text, text_mask, space_pos, time_pos) -> torch.Tensor:
        B, T, N, _ = proxy.shape
        # Eq. 4: all T*N proxies query the original text features.
        p = rearrange(proxy, "b t n c -> b (t n) c")
        p = self.norm_t2p(p + self.t2p(p, text, key_padding_mask=text_mask))

        proxy_time = repeat(time_pos, "t c -> (t n) c", n=N)
        if self.mode == "decoupled":
            # Eq. 5, spatial: each frame's proxies query that frame's video tokens F_v^{k-1}.
            p_s = rearrange(p, "b (t n) c -> (b t) n c", t=T)
            v_s = rearrange(video, "b t s c -> (b t) s c")
            p_s = p_s + self.v2p_s(p_s, v_s, key_pos=space_pos)
            # Eq. 5, temporal: each proxy's frames query the spatially pooled video.
            pooled = video.mean(dim=2)  # (B, T, C)
            p_t = p + self.v2p_t(p, pooled, query_pos=proxy_time, key_pos=time_pos)
            proxy_out = rearrange(p_s, "(b t) n c -> b (t n) c", b=B) + p_t
        else:  # CMIE*: every proxy queries all T*S video tokens
            v = rearrange(video, "b t s c -> b (t s) c")
            proxy_out = p + self.v2p_s(
                p, v, query_pos=proxy_time, key_pos=_space_time_pos(space_pos, time_pos)
            )
        proxy_out = self.ffn_proxy(self.norm_v2p(proxy_out))
        return rearrange(proxy_out, "b (t n) c -> b t n c", t=T)


def _space_time_pos(space_pos: torch.Tensor, time_pos: torch.Tensor) -> torch.Tensor:
    """(S, C) and (T, C) -> (T*S, C), frame-major like ``"b t s c -> b (t s) c"``."""
    return rearrange(time_pos[:, None, :] + space_pos[None, :, :], "t s c -> (t s) c")


class CMIE(nn.Module):
    """K stacked CMIE modules with the learned initial proxy queries Q^0."""

    def __init__(self, dim: int, num_queries: int, config: CMIEConfig) -> None:
        super().__init__()
        self.proxy_embed = nn.Embedding(num_queries, dim)  # Q^0: the same N queries each frame
        self.layers = nn.ModuleList(CMIELayer(dim, config) for _ in range(config.num_layers))

    def initial_proxies(self, batch: int, frames: int) -> torch.Tensor:
        return repeat(self.proxy_embed.weight, "n c -> b t n c", b=batch, t=frames)

    def forward(self, video, text, text_mask, space_pos, time_pos):
        """Video tokens (B, T, S, C) and text (B, L, C) -> F_v^K (B, T, S, C), Q^K (B, T, N, C)."""
        proxy = self.initial_proxies(video.shape[0], video.shape[1])
        for layer in self.layers:
            video, proxy = layer(video, proxy, text, text_mask, space_pos, time_pos)
        return video, proxy
