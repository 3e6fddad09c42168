"""Mask head shared by AVESFormer and the AVSegFormer baseline (AVSegFormer's `AVSegHead`, model-spec §3.4).

1. Mask feature M: the stride-8 memory level, upsampled x2, plus `lateral_conv` of the stride-4
   feature, through `out_conv` -> [N, C, H/4, W/4].
2. Audio gate (`fusion_block`): the audio token attends over M's pixels; a sigmoid of the result
   scales M's channels. Its keys are pixels, not one audio token, so it is not dissipated.
3. Query maps S = einsum(queries, M) -> [N, Q, H/4, W/4]; an MLP of 1x1 convs Q -> hidden -> hidden -> C,
   added to M.
4. `fc`: conv3x3 C->c1, conv3x3 c1->c2, ReLU, conv1x1 c2->K. AVSegFormer upsamples x4 after the first
   conv and runs the rest at full size; `upsample_last=True` [R] runs all convs at 1/4 scale and
   upsamples the logits (as Mask2Former and SAM do), which removes ~1.9 GMAC per 224² frame.
The auxiliary output is M's channel mean (AVSegFormer's "mix" loss target): after step 3, or, as the
official code does (`aux_before_query_maps`), after step 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.modeling.layers import conv_gn


class AudioGate(nn.Module):
    """Audio token queries the mask-feature pixels; the answer gates M's channels.

    AVSegFormer's `CrossModalMixer` (model/utils/fusion_block.py at 7083cb6) has no q/kv biases
    (`qkv_bias=False`); `qkv_bias=True` is this project's earlier reconstruction, kept for AVESFormer.
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv_proj = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.num_heads = num_heads

    def forward(self, mask_feature: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """mask_feature [N, C, H, W], audio [N, 1, C] -> gated mask feature [N, C, H, W]."""
        N, C, H, W = mask_feature.shape
        h = self.num_heads
        pixels = mask_feature.flatten(2).transpose(1, 2)  # [N, H*W, C]
        q = self.q_proj(audio).view(N, 1, h, C // h).transpose(1, 2)  # [N, h, 1, C/h]
        k, v = self.kv_proj(pixels).view(N, H * W, 2, h, C // h).permute(2, 0, 3, 1, 4)  # [N, h, HW, C/h]
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(N, 1, C)
        gate = torch.sigmoid(self.proj(out)).view(N, C, 1, 1)
        return mask_feature * gate


class MaskHead(nn.Module):
    def __init__(self, *, dim: int, num_tokens: int, num_classes: int, num_heads: int, mlp_hidden: int,
                 fc_channels: tuple[int, int], upsample_last: bool, audio_gate: bool, gate_qkv_bias: bool = True,
                 aux_before_query_maps: bool = False) -> None:
        super().__init__()
        self.lateral_conv = conv_gn(dim, dim, 1)
        self.out_conv = conv_gn(dim, dim, 3, relu=True)
        self.fusion_block = AudioGate(dim, num_heads, qkv_bias=gate_qkv_bias) if audio_gate else None
        self.aux_before_query_maps = aux_before_query_maps
        self.mlp = nn.Sequential(
            nn.Conv2d(num_tokens, mlp_hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(mlp_hidden, mlp_hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(mlp_hidden, dim, 1),
        )
        c1, c2 = fc_channels
        self.fc = nn.Sequential(
            nn.Conv2d(dim, c1, 3, padding=1),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c2, num_classes, 1, bias=False),
        )
        self.upsample_last = upsample_last

    def forward(self, fine: torch.Tensor, stride8: torch.Tensor, queries: torch.Tensor, audio: torch.Tensor,
                out_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks from the fused features.

        Args:
            fine: [N, C, H/4, W/4] projected stride-4 backbone feature.
            stride8: [N, C, H/8, W/8] fused memory at stride 8.
            queries: [N, Q, C] decoder queries.
            audio: [N, 1, C] projected audio token.
            out_size: (H, W) of the logits.

        Returns:
            (mask logits [N, K, H, W], auxiliary logits [N, 1, H/4, W/4]).
        """
        up = F.interpolate(stride8, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        mask_feature = self.out_conv(up + self.lateral_conv(fine))  # [N, C, H/4, W/4]
        if self.fusion_block is not None:
            mask_feature = self.fusion_block(mask_feature, audio)
        if self.aux_before_query_maps:
            aux = mask_feature.mean(1, keepdim=True)  # [N, 1, H/4, W/4], the official AVSegFormer's
        query_maps = torch.einsum("nqc,nchw->nqhw", queries, mask_feature)  # [N, Q, H/4, W/4]
        mask_feature = mask_feature + self.mlp(query_maps)
        if not self.aux_before_query_maps:
            aux = mask_feature.mean(1, keepdim=True)
        if self.upsample_last:
            logits = F.interpolate(self.fc(mask_feature), size=out_size, mode="bilinear", align_corners=False)
        else:
            x = self.fc[0](mask_feature)
            x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
            logits = self.fc[1:](x)
        return logits, aux
