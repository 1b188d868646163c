"""Sample data for calibration and accuracy: built-in crops of scikit-image's photos, a folder of
images, or a NumPy file. Every set carries a content hash that goes into the manifest.

  builtin            random square crops of the photos scikit-image ships, resized to the
                     model's input and normalised with ImageNet's mean and std (image models)
  DIR/               every .png/.jpg/.jpeg/.bmp/.tif in DIR, resized and normalised the same way
  FILE.npy           an array (N, *input shape without the batch axis), used as is
  FILE.npz           arrays `inputs` (as above) and optionally `labels` (N,) integer classes

Accuracy is measured on the evaluation data as given and, for images, on shifted copies that
calibration's preprocessing never produces (`evaluation_sets`): users calibrate on the images
they have and deploy on a camera's, so the figure that counts is the worst of them.

  other-resize       scikit-image's resize (Gaussian anti-aliasing) instead of Pillow's
                     bilinear one, crops of 30-100% of the side with a squashed aspect ratio
  camera             sensor noise and a JPEG round trip before that resize
  other-photos       (builtin only) photos calibration never saw: a street scene, textures,
                     a document, the moon, a colour wheel
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.base.errors import UserError
from pipeline.frontend.images import IMAGENET_MEAN, IMAGENET_STD, preprocess, sample_image

# Photos of things ImageNet has classes for; crops of them are what "natural images" means in
# the accuracy figures. Calibration and evaluation draw different crops (different seeds).
BUILTIN_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "clock", "coins",
                  "hubble_deep_field")
# Photos that neither calibration nor the friendly evaluation set crop from.
OTHER_PHOTOS = ("stereo_motorcycle", "brick", "gravel", "grass", "moon", "colorwheel", "page")
CALIBRATION_SEED = 0
EVALUATION_SEED = 1
SHIFTS = {"other-resize": 1, "camera": 2, "other-photos": 3}  # shift -> its seed's last digit
CAMERA_NOISE = 0.02  # standard deviation of the sensor noise, on pixels in [0, 1]
JPEG_QUALITY = (60, 90)  # range of the round trip's quality
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


def evaluation_sets(spec: str, input_shape: tuple[int, ...], count: int,
                    seed: int = EVALUATION_SEED) -> tuple[Dataset, ...]:
    """The data accuracy is measured on: SPEC as given (builtin: crops drawn with `seed`, other
    than calibration's) then, for images, its shifted copies (module doc; seeds 10 x `seed` +
    1, 2, 3); a .npy/.npz file is model input already, so it is used as given only."""
    if spec == "builtin":
        given = load_dataset(spec, input_shape, count, seed)
        photos = {"other-resize": BUILTIN_PHOTOS, "camera": BUILTIN_PHOTOS,
                  "other-photos": OTHER_PHOTOS}
        return (given, *(_shifted(spec, shift, [sample_image(n) for n in names], input_shape,
                                  count, seed) for shift, names in photos.items()))
    given = load_dataset(spec, input_shape, count, CALIBRATION_SEED)
    if not Path(spec).is_dir():
        return (given,)
    images = _read_images(Path(spec), count)
    return (given, *(_shifted(spec, shift, images, input_shape, count, seed)
                     for shift in ("other-resize", "camera")))


def _shifted(spec: str, shift: str, photos: list[np.ndarray], input_shape: tuple[int, ...],
             count: int, seed: int) -> Dataset:
    channels, height, width = _image_shape(input_shape, "Shifted evaluation data")
    rng = np.random.default_rng(10 * seed + SHIFTS[shift])
    inputs = []
    for i in range(count):
        photo = photos[i % len(photos)]
        if spec == "builtin" or count > len(photos):  # enough images: each used whole
            photo = _crop(photo, rng)
        if shift == "camera":
            photo = _camera(photo, rng)
        inputs.append(_to_input_skimage(photo, channels, height, width))
    inputs = np.ascontiguousarray(np.stack(inputs), dtype="float32")
    return Dataset(f"{spec} ({shift})", inputs, None, _digest(inputs, None))


def _crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crop of 30-100% of the shorter side, 3:4 to 4:3, sometimes mirrored."""
    side = min(photo.shape[:2]) * rng.uniform(0.3, 1.0)
    aspect = rng.uniform(0.75, 1.0 / 0.75)
    rows = max(8, min(photo.shape[0], int(side * aspect ** 0.5)))
    cols = max(8, min(photo.shape[1], int(side / aspect ** 0.5)))
    top = int(rng.integers(0, photo.shape[0] - rows + 1))
    left = int(rng.integers(0, photo.shape[1] - cols + 1))
    crop = photo[top:top + rows, left:left + cols]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def _camera(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise, then a JPEG round trip at a random quality."""
    import io

    from PIL import Image

    noisy = image.astype("float32") / 255 + rng.normal(0, CAMERA_NOISE, image.shape)
    pixels = np.clip(np.round(noisy * 255), 0, 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(
        buffer, "JPEG", quality=int(rng.integers(*JPEG_QUALITY, endpoint=True)))
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _to_input_skimage(image: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    import skimage.transform

    resized = skimage.transform.resize(image, (height, width), order=1, anti_aliasing=True)
    x = ((resized.astype("float32") - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return x.mean(axis=0, keepdims=True) if channels == 1 else x


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
    channels, height, width = _image_shape(input_shape, f"Image folder {folder}")
    return np.stack([_to_input(image, channels, height, width)
                     for image in _read_images(folder, count)])


def _read_images(folder: Path, count: int) -> list[np.ndarray]:
    """The first `count` images of `folder`, as RGB uint8 (H, W, 3)."""
    import skimage.io

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
        images.append(np.asarray(image[..., :3], dtype="uint8"))
    return images


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
