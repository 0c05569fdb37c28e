"""Text anchors from a prompt ensemble: the one routine every text-based method shares."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from aaclip import prompts

Encoder = Callable[[torch.Tensor], torch.Tensor]  # tokens (N, T) -> features (N, E)


def ensemble_anchors(
    encode: Encoder, tokenizer: Callable, description: str, device: torch.device
) -> torch.Tensor:
    """Anchors (E, 2), column 0 normal, column 1 abnormal: the L2-normalised mean of the
    L2-normalised features of each group's sentences (AA-CLIP's prompt ensemble)."""
    columns = []
    for sentences in prompts.prompt_sentences(description):
        features = F.normalize(encode(tokenizer(sentences).to(device)), dim=-1)
        columns.append(F.normalize(features.mean(0), dim=0))
    return torch.stack(columns, dim=1)


def class_text(class_name: str, dataset: str | None, mode: str, description: str | None) -> str:
    """What fills the prompts: the user's description if given, else the class's (see
    `prompts.describe`)."""
    return description if description else prompts.describe(class_name, dataset, mode)
