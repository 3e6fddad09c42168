"""The property AVESFormer is about (arXiv 2408.01708, Fig. 1; model-spec §2.2).

With AVSegFormer's single audio token as key and value, softmax over a length-1 key axis is exactly 1,
so every query's cross-attention output is the same vector: the attention cannot tell queries apart.
With the Prompt Query Generator the keys/values are N distinct audio-conditioned prompts, and the
outputs differ from query to query.
"""

from __future__ import annotations

import torch

from model.build import build_model
from model.variants import get_config


def _capture_output(module: torch.nn.Module, run) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _inp, out: seen.append(out.detach()))
    try:
        run()
    finally:
        handle.remove()
    return seen


def _spread_across_tokens(x: torch.Tensor) -> float:
    """Largest deviation of any token's vector from the first token's, per batch item: [N, L, C] -> float."""
    return float((x - x[:, :1]).abs().max())


def test_avsegformer_cross_attention_output_is_identical_for_every_query() -> None:
    torch.manual_seed(0)
    model = build_model(get_config("avsegformer-tiny"))
    frames, audio = torch.rand(2, 3, 64, 64), torch.randn(2, 1, 96, 64)
    layer = model.decoder.query_generator.layers[0]
    with torch.inference_mode():
        outputs = _capture_output(layer.cross_attn, lambda: model(frames, audio))
        token = model.audio_proj(model.encode_audio(audio))[:, None]  # [N, 1, C]
        queries = torch.randn(2, 16, token.shape[-1])
        weights = layer.cross_attn.attention_weights(queries, token)  # [N, heads, 16, 1]
    (out,) = outputs
    assert out.shape[1] == 16
    assert _spread_across_tokens(out) < 1e-5, "one audio key: every query must receive the same vector"
    torch.testing.assert_close(weights, torch.ones_like(weights))  # softmax over one key is exactly 1


def test_pqg_cross_attention_output_differs_between_tokens() -> None:
    torch.manual_seed(0)
    model = build_model(get_config("avesformer-tiny"))
    frames, audio = torch.rand(2, 3, 64, 64), torch.randn(2, 1, 96, 64)
    block = model.decoder.attn_blocks[0]
    with torch.inference_mode():
        outputs = _capture_output(block.m_cross, lambda: model(frames, audio))
        token = model.audio_proj(model.encode_audio(audio))[:, None]
        prompts = model.decoder.pqg(token)  # [N, P, C] audio-conditioned queries
        weights = block.m_cross.attention_weights(torch.randn(2, 8, token.shape[-1]), prompts)
    (out,) = outputs  # memory tokens attending to the PQG tokens: [N, L, C]
    assert prompts.shape[1] == 16
    assert _spread_across_tokens(prompts) > 1e-2, "PQG must produce distinct queries from one audio feature"
    assert _spread_across_tokens(out) > 1e-2, "with N > 1 keys the outputs must differ between tokens"
    # the attention is a real distribution over the prompts, not a constant 1
    assert float(weights.max()) < 1.0
    assert float(weights.std(dim=-1).mean()) > 0


def test_same_attention_module_dissipates_with_one_key_and_not_with_prompts() -> None:
    """One and the same cross-attention: K = V = audio token collapses, K = V = PQG(audio) does not."""
    torch.manual_seed(0)
    model = build_model(get_config("avesformer-tiny"))
    attn = model.decoder.attn_blocks[0].q_cross
    C = model.decoder.pqg.prompts.weight.shape[1]
    queries = torch.randn(3, 10, C)
    audio_token = torch.randn(3, 1, C)
    with torch.inference_mode():
        single = attn(queries, audio_token, audio_token)
        prompts = model.decoder.pqg(audio_token)
        expanded = attn(queries, prompts, prompts)
    assert _spread_across_tokens(single) < 1e-5
    assert _spread_across_tokens(expanded) > 1e-2
