"""AA-CLIP (CVPR 2025): residual adapters on a frozen CLIP, as the released code computes them.

Module and parameter names mirror the released checkpoints (`text_adapter`, `image_adapter`
with `layer_adapters`, `seg_proj`, `det_proj`), so `text_adapter.pth` and
`image_adapter_N.pth` load with a plain `load_state_dict`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aaclip import backbone as bb
from aaclip import prompts
from aaclip.config import AAClipConfig


class Adapter(nn.Module):
    """Linear (no bias) + LeakyReLU, the residual adapter of every adapted block."""

    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(width, width, bias=False), nn.LeakyReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Projection(nn.Module):
    """Linear (no bias), optionally followed by LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, relu: bool):
        super().__init__()
        linear = nn.Linear(c_in, c_out, bias=False)
        self.fc = nn.Sequential(linear, nn.LeakyReLU()) if relu else linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def residual_adapt(x: torch.Tensor, adapter: nn.Module, weight: float) -> torch.Tensor:
    """x <- w * a + (1 - w) * x with a = adapter(x) rescaled to the per-token norm of x."""
    a = adapter(x)
    a = a * x.norm(dim=-1, keepdim=True) / a.norm(dim=-1, keepdim=True)
    return weight * a + (1 - weight) * x


class AAClip(nn.Module):
    """Frozen CLIP + trainable text adapters (stage 1) and image adapters (stage 2)."""

    def __init__(self, clip: nn.Module, cfg: AAClipConfig | None = None, tokenizer=None):
        super().__init__()
        cfg = cfg or AAClipConfig()
        self.cfg = cfg
        self.clip = clip
        self.tokenizer = tokenizer or bb.get_tokenizer(clip.aaclip_identity["name"])
        visual = clip.visual
        v_depth = len(visual.transformer.resblocks)
        t_depth = len(clip.transformer.resblocks)
        v_width = visual.conv1.out_channels
        t_width = clip.token_embedding.embedding_dim
        embed = clip.text_projection.shape[1]

        self.levels = tuple(cfg.levels or bb.default_levels(v_depth))
        self.text_adapt_until = cfg.text_adapt_until or bb.scaled_count(3, 12, t_depth)
        self.image_adapt_until = cfg.image_adapt_until or bb.scaled_count(6, 24, v_depth)
        self.surgery_blocks = cfg.surgery_blocks or bb.scaled_count(19, 24, v_depth)

        self.text_adapter = nn.ModuleList(
            [Adapter(t_width) for _ in range(self.text_adapt_until)]
            + [Projection(t_width, embed, relu=True)]  # replaces CLIP's text_projection
        )
        self.image_adapter = nn.ModuleDict(
            {
                "layer_adapters": nn.ModuleList(
                    [Adapter(v_width) for _ in range(self.image_adapt_until)]
                ),
                "seg_proj": nn.ModuleList(
                    [Projection(v_width, embed, cfg.relu) for _ in self.levels]
                ),
                "det_proj": Projection(v_width, embed, cfg.relu),
            }
        )
        for p in [*self.text_adapter.parameters(), *self.image_adapter.parameters()]:
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.clip.requires_grad_(False)

    # ---------------------------------------------------------------- text
    def encode_text(self, tokens: torch.Tensor, adapted: bool = True) -> torch.Tensor:
        """Text features (N, E); `adapted=False` is CLIP's own encode_text."""
        clip = self.clip
        if not adapted:
            return clip.encode_text(tokens)
        x = clip.token_embedding(tokens) + clip.positional_embedding
        for i, block in enumerate(clip.transformer.resblocks):
            x = block(x, attn_mask=clip.attn_mask)
            if i < self.text_adapt_until:
                x = residual_adapt(x, self.text_adapter[i], self.cfg.text_adapt_weight)
        x = clip.ln_final(x)
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return self.text_adapter[-1](eot)

    def class_anchors(self, description: str, adapted: bool = True) -> torch.Tensor:
        """Anchors (E, 2) for one class: column 0 normal, column 1 abnormal."""
        device = self.clip.token_embedding.weight.device
        columns = []
        for sentences in prompts.prompt_sentences(description):
            tokens = self.tokenizer(sentences).to(device)
            features = F.normalize(self.encode_text(tokens, adapted), dim=-1)
            columns.append(F.normalize(features.mean(0), dim=0))
        return torch.stack(columns, dim=1)

    def anchors_for(
        self, class_names: list[str], dataset: str | None, adapted: bool = True
    ) -> dict[str, torch.Tensor]:
        """Anchors for each distinct class name, with the configured description table."""
        out = {}
        for name in dict.fromkeys(class_names):
            text = prompts.describe(name, dataset, self.cfg.class_descriptions)
            out[name] = self.class_anchors(text, adapted)
        return out

    # ---------------------------------------------------------------- image
    def encode_image(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Adapted patch features per level (B, L, E), L2-normalised, and the detection feature."""
        visual = self.clip.visual
        adapters = self.image_adapter["layer_adapters"]
        x = bb.embed_patches(visual, images)
        tokens = []
        for i, block in enumerate(visual.transformer.resblocks):
            x = block(x)
            if i < self.image_adapt_until:
                x = residual_adapt(x, adapters[i], self.cfg.image_adapt_weight)
            if i + 1 in self.levels:
                tokens.append(visual.ln_post(x[:, 1:]))
        seg = [
            F.normalize(proj(t), dim=-1)
            for proj, t in zip(self.image_adapter["seg_proj"], tokens, strict=True)
        ]
        det = F.normalize(self.image_adapter["det_proj"](tokens[-1]), dim=-1).mean(1)
        return seg, det

    def stage1_features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Frozen stage-1 features: surgery patch embeddings + the CLIP image embedding.

        Returns per-level (B, L, E) features with the L2-normalised image embedding added to
        every token (as the released code does), and the image embedding itself.
        """
        patches, image_embedding = bb.surgery_features(
            self.clip, images, self.levels, self.surgery_blocks, self.cfg.vv_attention_axis
        )
        return [p + image_embedding.unsqueeze(1) for p in patches], image_embedding

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Trainable weights only (never the frozen backbone), flat names."""
        return {
            **{f"text_adapter.{k}": v for k, v in self.text_adapter.state_dict().items()},
            **{f"image_adapter.{k}": v for k, v in self.image_adapter.state_dict().items()},
        }

    def load_adapter_state(self, state: dict[str, torch.Tensor], source: str = "checkpoint"):
        """Load weights saved by `adapter_state`; a shape mismatch names the tensor."""
        own = self.adapter_state()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"{source}: adapter weights do not fit this model: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
        for k, v in state.items():
            if own[k].shape != v.shape:
                raise ValueError(
                    f"{source}: {k} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}"
                )
        for prefix, module in (
            ("text_adapter.", self.text_adapter),
            ("image_adapter.", self.image_adapter),
        ):
            module.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
