"""Vanilla CLIP baseline: frozen encoders, AA-CLIP's prompt ensemble and scoring rules.

Used by the anomaly-unawareness analysis: the same maps and scores as AA-CLIP, with patch
tokens of the last block (ln_post, proj) and anchors from CLIP's own text encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aaclip import backbone as bb
from aaclip import prompts
from aaclip.config import AAClipConfig


class ClipBaseline(nn.Module):
    """Same interface as `AAClip` for evaluation: `anchors_for` and `encode_image`."""

    text_adapted = False

    def __init__(self, clip: nn.Module, cfg: AAClipConfig | None = None, tokenizer=None):
        super().__init__()
        self.cfg = cfg or AAClipConfig()
        self.clip = clip
        self.tokenizer = tokenizer or bb.get_tokenizer(clip.aaclip_identity["name"])
        self.levels = (len(clip.visual.transformer.resblocks),)

    def class_anchors(self, description: str, adapted: bool = False) -> torch.Tensor:
        device = self.clip.token_embedding.weight.device
        columns = []
        for sentences in prompts.prompt_sentences(description):
            features = self.clip.encode_text(self.tokenizer(sentences).to(device))
            columns.append(F.normalize(F.normalize(features, dim=-1).mean(0), dim=0))
        return torch.stack(columns, dim=1)

    def anchors_for(self, class_names, dataset, adapted: bool = False) -> dict:
        return {
            n: self.class_anchors(prompts.describe(n, dataset, self.cfg.class_descriptions))
            for n in dict.fromkeys(class_names)
        }

    def encode_image(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        visual = self.clip.visual
        out = visual.forward_intermediates(
            images, indices=[len(visual.transformer.resblocks) - 1], output_fmt="NLC"
        )
        tokens = visual.ln_post(out["image_intermediates"][-1]) @ visual.proj
        return [F.normalize(tokens, dim=-1)], F.normalize(out["image_features"], dim=-1)
