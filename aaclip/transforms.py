"""Image/mask transforms of the released AA-CLIP training code, rebuilt on torchvision v2.

The released pipeline is: [colour jitter on the PIL image, stage 2 only] → resize (S, S)
bicubic → ToTensor → Normalize; the mask is resized nearest and binarised; then one random
geometric transform is applied to image and mask together. All randomness comes from
torch's global generator, so ``torch.manual_seed`` (and the DataLoader's per-worker seeding)
makes augmentation reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

AUGMENTATIONS = ("none", "geometric", "geometric+color", "mvfa_x11")
EXPANDING = {"mvfa_x11": 11}
"""Recipes that expand every record into a fixed set of variants (dataset length x n):
``mvfa_x11`` is MVFA-AD's x11 support augmentation (aaclip.augment_x11), item i = variant
i mod 11 of record i // 11."""

# The released code stacks the normalised image and the mask into one 4-channel tensor and
# rotates/translates it with torchvision's default interpolation, NEAREST, for both. We keep
# NEAREST for the image too so the training inputs match; fill 0 (the normalised mean).
IMAGE_INTERPOLATION = InterpolationMode.NEAREST
ROTATION_DEGREES = 30.0  # released: math.degrees(math.pi / 6)
TRANSLATE = (0.15, 0.15)
GEOMETRIC_P = 0.5
COLOR_JITTER = (("brightness", 0.5), ("contrast", 0.5), ("saturation", 0.5))
COLOR_P = 0.7


def check_augment(augment: str) -> None:
    """Raise ValueError unless ``augment`` is one of AUGMENTATIONS."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}; got {augment!r}")


def color_transform() -> v2.Compose:
    """Three independent jitters (brightness, contrast, saturation), each with p=0.7."""
    return v2.Compose(
        [v2.RandomApply([v2.ColorJitter(**{k: v})], p=COLOR_P) for k, v in COLOR_JITTER]
    )


def geometric_transform() -> v2.Compose:
    """Rotation ±30° (p=.5), translation 15% (p=.5), h-flip (p=.5), v-flip (p=.5)."""
    return v2.Compose(
        [
            v2.RandomApply(
                [v2.RandomRotation(ROTATION_DEGREES, interpolation=IMAGE_INTERPOLATION)],
                p=GEOMETRIC_P,
            ),
            v2.RandomApply(
                [v2.RandomAffine(0, translate=TRANSLATE, interpolation=IMAGE_INTERPOLATION)],
                p=GEOMETRIC_P,
            ),
            v2.RandomHorizontalFlip(GEOMETRIC_P),
            v2.RandomVerticalFlip(GEOMETRIC_P),
        ]
    )


def image_to_tensor(
    image: Image.Image,
    size: int,
    mean: Sequence[float] | None = CLIP_MEAN,
    std: Sequence[float] | None = CLIP_STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Resize an RGB PIL image to (size, size) bicubic (no crop), to `dtype` in [0, 1], then
    normalise with mean/std (None: leave in [0, 1], as MVFA-AD's release does)."""
    image = image.resize((size, size), Image.Resampling.BICUBIC)
    x = v2.functional.to_dtype(v2.functional.to_image(image), dtype, scale=True)
    if mean is not None:
        x = v2.functional.normalize(x, list(mean), list(std))
    return x.as_subclass(torch.Tensor)


class JointTransform:
    """Apply the same random geometric transform to a (3,S,S) image and a (1,S,S) mask."""

    def __init__(self) -> None:
        self.transform = geometric_transform()

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out_image, out_mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return out_image.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor)
