"""Vanilla CLIP baseline: frozen encoders, AA-CLIP's prompt ensemble and scoring rules.

Used by the anomaly-unawareness analysis: the same maps and scores as AA-CLIP, with patch
tokens of the last block (ln_post, proj) and anchors from CLIP's own text encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aaclip import config as C
from aaclip import scoring, text
from aaclip.methods.base import ClassContext, Method, Prediction


@dataclass
class ClipConfig:
    class_descriptions: str = "official"  # official | plain (see aaclip.prompts.describe)


def _paper(data_root: str = "data") -> C.ExperimentConfig:
    return C.paper_experiment("clip", ClipConfig(), data_root)


def _smoke(data_root: str = "data/synthetic") -> C.ExperimentConfig:
    return C.smoke_experiment("clip", ClipConfig(class_descriptions="plain"), data_root)


class ClipBaseline(Method):
    """Frozen CLIP: last-block patch tokens against frozen-text anchors; no training."""

    name = "clip"
    summary = "frozen CLIP with AA-CLIP's prompt ensemble and scoring (no training)"
    Config = ClipConfig
    PRESETS = {"paper": _paper, "smoke": _smoke}
    published_name = "CLIP"
    release_selection = "no training: nothing to select"

    def class_anchors(
        self, class_name: str, dataset: str | None, description: str | None = None
    ) -> torch.Tensor:
        desc = text.class_text(class_name, dataset, self.cfg.class_descriptions, description)
        return frozen_anchors(self, desc)

    def encode_image(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Last-block patch embeddings [(B, L, E)] and the image embedding (B, E), normalised."""
        visual = self.clip.visual
        out = visual.forward_intermediates(
            images, indices=[self.backbone.vision_depth - 1], output_fmt="NLC"
        )
        tokens = visual.ln_post(out["image_intermediates"][-1]) @ visual.proj
        return [F.normalize(tokens, dim=-1)], F.normalize(out["image_features"], dim=-1)

    def predict(self, images: torch.Tensor, ctx: ClassContext) -> Prediction:
        return anchor_prediction(self, images, ctx)


def frozen_anchors(method: Method, description: str) -> torch.Tensor:
    """(E, 2) anchors from CLIP's own (frozen) text encoder."""
    b = method.backbone
    return text.ensemble_anchors(b.clip.encode_text, b.tokenizer, description, b.device)


def anchor_prediction(method: Method, images: torch.Tensor, ctx: ClassContext) -> Prediction:
    """AA-CLIP-style raw outputs: summed per-level maps against the anchors, and p(abnormal)
    of the detection feature. For methods whose `encode_image` returns (levels, det)."""
    with method.autocast():
        seg, det = method.encode_image(images)
    size = images.shape[-1]
    maps = scoring.anomaly_map(seg, ctx.text, size, ctx.domain)
    return Prediction(maps, scoring.image_probability(det, ctx.text))
