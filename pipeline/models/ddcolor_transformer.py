# Adapted from piddnad/DDColor basicsr/archs/ddcolor_arch_utils/{transformer_utils,position_encoding}.py
# and ddcolor/model.py (Apache-2.0; Mask2Former/DETR lineage).
"""DDColor's multi-scale colour decoder: learnable colour queries attend to image features."""

import math

import torch
import torch.nn.functional as F
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """DETR sine position encoding over a (N,C,H,W) map; returns (N, 2*num_pos_feats, H, W)."""

    def __init__(self, num_pos_feats: int = 64, temperature: int = 10000, normalize: bool = False) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        ones = torch.ones((batch, height, width), device=x.device, dtype=torch.float32)
        y_embed = ones.cumsum(1)
        x_embed = ones.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).to(x.dtype)


def _xavier_init_matrices(module: nn.Module) -> None:
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention over the queries (the only variant DDColor uses; dropout 0)."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        _xavier_init_matrices(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        q = k = tgt + query_pos
        attended = self.self_attn(q, k, value=tgt, need_weights=False)[0]
        return self.norm(tgt + attended)


class CrossAttentionLayer(nn.Module):
    """Post-norm cross-attention from the queries to one scale of image features."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        _xavier_init_matrices(self)

    def forward(
        self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor
    ) -> torch.Tensor:
        attended = self.multihead_attn(
            query=tgt + query_pos, key=memory + pos, value=memory, need_weights=False
        )[0]
        return self.norm(tgt + attended)


class FFNLayer(nn.Module):
    """Post-norm feed-forward block (Linear -> ReLU -> Linear, residual)."""

    def __init__(self, d_model: int, dim_feedforward: int = 2048) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        _xavier_init_matrices(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    """Plain MLP with ReLU between layers (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip([input_dim] + hidden, hidden + [output_dim])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MultiScaleColorDecoder(nn.Module):
    """Colour queries refined round-robin against 3 feature scales; each query yields one colour map.

    Returns (N, num_queries, H, W): the dot product of every query's colour embedding with
    the full-resolution pixel embedding ``img_features`` (which must have color_embed_dim channels).
    """

    def __init__(
        self,
        in_channels: list[int],
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 9,
        color_embed_dim: int = 256,
        num_scales: int = 3,
    ) -> None:
        super().__init__()
        if len(in_channels) != num_scales:
            raise ValueError(f"need one input channel count per scale ({num_scales}), got {in_channels}")
        self.num_layers = dec_layers
        self.num_feature_levels = num_scales
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_scales, hidden_dim)
        self.input_proj = nn.ModuleList(self._make_input_proj(c, hidden_dim) for c in in_channels)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.color_embed = MLP(hidden_dim, hidden_dim, color_embed_dim, 3)

    @staticmethod
    def _make_input_proj(in_channels: int, hidden_dim: int) -> nn.Conv2d:
        projection = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
        nn.init.kaiming_uniform_(projection.weight, a=1)
        nn.init.constant_(projection.bias, 0)
        return projection

    def forward(self, multi_scale: list[torch.Tensor], img_features: torch.Tensor) -> torch.Tensor:
        if len(multi_scale) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature maps, got {len(multi_scale)}")
        src, pos = [], []
        for level, feature in enumerate(multi_scale):
            # (N,C,H,W) -> (HW,N,C): nn.MultiheadAttention here is sequence-first, as upstream.
            pos.append(self.pe_layer(feature).flatten(2).permute(2, 0, 1))
            projected = self.input_proj[level](feature).flatten(2)
            src.append((projected + self.level_embed.weight[level][None, :, None]).permute(2, 0, 1))

        batch = img_features.shape[0]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, batch, 1)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            output = self.transformer_cross_attention_layers[i](output, src[level], pos[level], query_embed)
            output = self.transformer_self_attention_layers[i](output, query_embed)
            output = self.transformer_ffn_layers[i](output)

        color_embed = self.color_embed(self.decoder_norm(output).transpose(0, 1))
        return torch.einsum("bqc,bchw->bqhw", color_embed, img_features)
