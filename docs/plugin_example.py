"""Your own method on every benchmark: copy this file next to you and run

    python /path/to/scripts/test.py --data all --method plugin_example:factory

It defines value-value attention in CLIP's last block (no residual, no MLP) by implementing only
``dense_embeddings``; windows, text embeddings, post-processing and the protocol come from the core.
CLIP model/weights: $PLUGIN_CLIP / $PLUGIN_CLIP_WEIGHTS (default ViT-B-16, OpenAI).
"""
import os

import torch.nn.functional as F

from proxyclip_pl import Segmenter, build_clip, protocol_kwargs
from proxyclip_pl.correlative_attention import last_block_heads, merge_heads


class ValueValueCLIP(Segmenter):
    def dense_embeddings(self, windows):
        visual = self.clip.visual
        tokens, grid = self.tokens(self.normalize_input(windows))  # [B, 1 + gh*gw, D] entering the last block
        _, _, v = last_block_heads(visual, tokens)  # [B, heads, L, D / heads]
        z = visual.transformer.resblocks[-1].attn.out_proj(merge_heads(F.scaled_dot_product_attention(v, v, v)))
        return visual.ln_post(z[:, 1:]) @ visual.proj, grid  # [B, gh*gw, d], (gh, gw)


def factory(vocabulary, protocol):
    clip, tokenizer = build_clip(os.environ.get("PLUGIN_CLIP", "ViT-B-16"), os.environ.get("PLUGIN_CLIP_WEIGHTS"))
    return ValueValueCLIP(clip, vocabulary, tokenizer=tokenizer, **protocol_kwargs(protocol))
