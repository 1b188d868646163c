"""Natural images that ship offline (scikit-image's samples), preprocessed for ImageNet nets."""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype="float32")
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype="float32")


def sample_image(name: str) -> np.ndarray:
    """An RGB uint8 image (H, W, 3) from scikit-image's bundled data, e.g. 'chelsea'."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if name == "stereo_motorcycle":  # (left, right, disparity)
        image = image[0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return image[..., :3]


def preprocess(image: np.ndarray, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """Resize (antialiased bilinear) to `size` (height, width), normalise, and lay out as NCHW
    float32."""
    import torch
    from torch.nn import functional as F

    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.from_numpy(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.from_numpy(
        IMAGENET_STD).view(1, 3, 1, 1)
    return x.numpy().astype("float32")


def imagenet_input(name: str) -> np.ndarray:
    return preprocess(sample_image(name))
