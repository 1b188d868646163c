"""Sample data for calibration and accuracy: built-in crops of scikit-image's photos, a folder of
images, or a NumPy file. Every set carries a content hash that goes into the manifest.

  builtin            random square crops of the photos scikit-image ships, resized to the
                     model's input and normalised with ImageNet's mean and std (image models)
  DIR/               every .png/.jpg/.jpeg/.bmp/.tif in DIR, resized and normalised the same way
  FILE.npy           an array (N, *input shape without the batch axis), used as is
  FILE.npz           arrays `inputs` (as above) and optionally `labels` (N,) integer classes
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.base.errors import UserError
from pipeline.frontend.images import preprocess, sample_image

# Photos of things ImageNet has classes for; crops of them are what "natural images" means in
# the accuracy figures. Calibration and evaluation draw different crops (different seeds).
BUILTIN_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "clock", "coins",
                  "hubble_deep_field")
CALIBRATION_SEED = 0
EVALUATION_SEED = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Dataset:
    spec: str  # as given: "builtin", a folder, or a .npy/.npz path
    inputs: np.ndarray  # (N, *input shape without batch), float32
    labels: np.ndarray | None  # (N,) int64, when the source has them
    sha256: str  # of the inputs and labels exactly as used

    def __len__(self) -> int:
        return len(self.inputs)


def load_dataset(spec: str, input_shape: tuple[int, ...], count: int, seed: int) -> Dataset:
    """`count` samples from SPEC shaped for a model input of `input_shape` (batch first)."""
    if count < 1:
        raise UserError(f"The sample count must be >= 1, not {count}.")
    if spec == "builtin":
        inputs, labels = builtin_crops(input_shape, count, seed), None
    else:
        path = Path(spec)
        if path.is_dir():
            inputs, labels = _image_folder(path, input_shape, count), None
        elif path.suffix in (".npy", ".npz"):
            inputs, labels = _numpy_file(path, input_shape, count)
        else:
            raise UserError(f"Data '{spec}' is neither 'builtin', a folder of images, nor a "
                            f".npy/.npz file. See python -m pipeline.tune --help.")
    inputs = np.ascontiguousarray(inputs, dtype="float32")
    return Dataset(spec, inputs, labels, _digest(inputs, labels))


def _digest(inputs: np.ndarray, labels: np.ndarray | None) -> str:
    digest = hashlib.sha256(f"{inputs.dtype}{inputs.shape}".encode())
    digest.update(inputs.tobytes())
    if labels is not None:
        digest.update(f"{labels.dtype}{labels.shape}".encode())
        digest.update(labels.tobytes())
    return digest.hexdigest()


def _image_shape(input_shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    if len(input_shape) != 4 or input_shape[1] not in (1, 3):
        raise UserError(f"{what} needs an image model (input N,1|3,H,W), but the input is "
                        f"{list(input_shape)}. Give --calibration/--eval-data as a .npy or .npz "
                        f"file of model inputs instead.")
    return input_shape[1], input_shape[2], input_shape[3]


def builtin_crops(input_shape: tuple[int, ...], count: int, seed: int) -> np.ndarray:
    """Random square crops (40-100% of the shorter side) of scikit-image's photos."""
    channels, height, width = _image_shape(input_shape, "Built-in sample data")
    rng = np.random.default_rng(seed)
    photos = [sample_image(name) for name in BUILTIN_PHOTOS]
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(min(photo.shape[:2]) * rng.uniform(0.4, 1.0))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = photo[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops.append(_to_input(crop, channels, height, width))
    return np.stack(crops)


def _to_input(image: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    x = preprocess(image, (height, width))[0]
    return x.mean(axis=0, keepdims=True) if channels == 1 else x


def _image_folder(folder: Path, input_shape: tuple[int, ...], count: int) -> np.ndarray:
    import skimage.io

    channels, height, width = _image_shape(input_shape, f"Image folder {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    images = []
    for path in files[:count]:
        try:
            image = skimage.io.imread(path)
        except (OSError, ValueError) as err:
            raise UserError(f"Cannot read image {path}: {err}. Remove or replace it.") from None
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        images.append(_to_input(image[..., :3], channels, height, width))
    return np.stack(images)


def _numpy_file(path: Path, input_shape: tuple[int, ...], count: int
                ) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise UserError(f"{path} does not exist.")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable NumPy file ({err}).") from None
    labels = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if "inputs" not in loaded.files:
                raise UserError(f"{path} has arrays {loaded.files}; it needs one named 'inputs' "
                                f"(and optionally 'labels').")
            inputs = loaded["inputs"]
            if "labels" in loaded.files:
                labels = loaded["labels"].astype("int64")
    else:
        inputs = loaded
    if tuple(inputs.shape[1:]) != tuple(input_shape[1:]):
        raise UserError(f"{path}: inputs have shape {list(inputs.shape)}, but the model takes "
                        f"N x {list(input_shape[1:])}.")
    if len(inputs) == 0:
        raise UserError(f"{path} holds no inputs (shape {list(inputs.shape)}); give at least "
                        f"one.")
    if labels is not None and labels.shape != (len(inputs),):
        raise UserError(f"{path}: 'labels' has shape {list(labels.shape)}; expected "
                        f"[{len(inputs)}], one class per input.")
    return inputs[:count], None if labels is None else labels[:count]
