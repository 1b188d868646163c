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
    """Resize an RGB uint8 image to `size` (height, width), bilinear and antialiased when
    shrinking, normalise, and lay out as NCHW float32.

    Pillow resamples 8-bit images in fixed-point integer arithmetic, so the same image gives
    the same bits on every CPU (torch's antialiased interpolation did not: its AVX2 and scalar
    kernels differ in the last bits, and calibration data, hashed into the manifest and
    matched against the tuning logs' calibration record, must not depend on the CPU)."""
    from PIL import Image

    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).resize(
        (size[1], size[0]), Image.Resampling.BILINEAR)
    x = (np.asarray(resized, dtype=np.float32) / np.float32(255) - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def imagenet_input(name: str) -> np.ndarray:
    return preprocess(sample_image(name))
