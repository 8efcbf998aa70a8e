"""Goal images: MNIST and Fashion-MNIST in torchvision's folder layout, or a user's folder of images.

Images stay uint8 [N, C, H, W] in memory (47 MB for MNIST) so goals can travel between processes as
dataset indices; pixels in [-1, 1] are made only where a network needs them. The IDX files are
read here (raw or .gz) so that a missing or truncated file gets a one-line error naming it;
torchvision is used to download, and only when asked.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.errors import DataError
from common.method.pixels import to_unit_range

TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
DATASETS = tuple(TORCHVISION_FOLDERS) + ("folder",)
IDX_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
LABEL_FILES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
REPO_ROOT = Path(__file__).resolve().parents[2]  # common/storage/data.py -> the checkout


@dataclass
class GoalSet:
    """The set of goals D: images as uint8 [N, C, H, W], addressed by index."""

    name: str
    split: str
    images: torch.Tensor  # [N, C, H, W] uint8

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W), what the networks are built for."""
        return tuple(self.images.shape[1:])

    def goals(self, indices, device=None) -> torch.Tensor:
        """Pixels in [-1, 1] for the given indices: [B] -> [B, C, H, W] float32."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return to_unit_range(self.images[index].to(device))

    def mean_image(self) -> torch.Tensor:
        """The data mean, one choice of the fixed initial state x_1 (section 3.1)."""
        return to_unit_range(self.images).mean(dim=0)

    def subset(self, count: int) -> GoalSet:
        """The first `count` images, for small runs and tests on a fixed set of goals."""
        if not 0 < count <= len(self):
            raise DataError(f"--num-goals must be between 1 and {len(self)} for {self.name}, got {count}")
        return GoalSet(self.name, self.split, self.images[:count].clone())

    def fingerprint(self) -> str:
        """A digest of the pixels, so a checkpoint whose replay holds goal indices refuses other data."""
        digest = hashlib.sha256(self.images.numpy().tobytes()).hexdigest()[:16]
        return f"{self.name}/{self.split}/{len(self)}x{'x'.join(map(str, self.image_shape))}/{digest}"


def default_data_dirs() -> list[Path]:
    """Where `python launch.py` looks for data when no --data-dir is given, in order."""
    dirs = [Path(os.environ["GCRL_DATA_DIR"])] if os.environ.get("GCRL_DATA_DIR") else []
    return dirs + [Path("data"), REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data"]


def find_data_dir(dataset: str, candidates: list[Path]) -> Path | None:
    """The first candidate that holds the dataset's training images (raw or .gz)."""
    for root in candidates:
        raw = root / TORCHVISION_FOLDERS[dataset] / "raw"
        name = IDX_FILES["train"]
        if (raw / name).exists() or (raw / f"{name}.gz").exists():
            return root
    return None


def load_goals(dataset: str, data_dir: str | Path | None, split: str = "train", download: bool = False) -> GoalSet:
    """Load a dataset split as a GoalSet, downloading through torchvision only when asked."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r} (expected one of {', '.join(DATASETS)})")
    if split not in IDX_FILES:
        raise DataError(f"unknown split {split!r} (expected 'train' or 'test')")
    if dataset == "folder":
        if data_dir is None:
            raise DataError("--dataset folder needs --data-dir pointing at a folder of images")
        return load_image_folder(Path(data_dir), split)
    root = _resolve_root(dataset, data_dir, download)
    raw = root / TORCHVISION_FOLDERS[dataset] / "raw"
    images = read_idx_images(raw / IDX_FILES[split])
    return GoalSet(dataset, split, images)


def load_labels(dataset: str, data_dir: str | Path | None, split: str = "train") -> torch.Tensor:
    """The class of each image of a split, [N] int64: only the benchmarks' digit classifier needs them (the method
    never sees a label)."""
    if dataset not in TORCHVISION_FOLDERS:
        raise DataError(f"dataset {dataset!r} has no labels (expected one of {', '.join(TORCHVISION_FOLDERS)})")
    if split not in LABEL_FILES:
        raise DataError(f"unknown split {split!r} (expected 'train' or 'test')")
    path = _resolve_root(dataset, data_dir, False) / TORCHVISION_FOLDERS[dataset] / "raw" / LABEL_FILES[split]
    data = _read_idx_bytes(path)
    if len(data) < 8 or data[:4] != b"\x00\x00\x08\x01":
        raise DataError(f"{path} is not an IDX label file (bad header); expected torchvision's MNIST layout")
    count = int.from_bytes(data[4:8], "big")
    if len(data) != 8 + count:
        raise DataError(f"{path} is truncated or corrupt: {len(data)} bytes, expected {8 + count} for {count} labels")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64))


def _resolve_root(dataset: str, data_dir, download: bool) -> Path:
    candidates = [Path(data_dir)] if data_dir is not None else default_data_dirs()
    found = find_data_dir(dataset, candidates)
    if found is not None:
        return found
    if download:
        return _download(dataset, candidates[0])
    where = ", ".join(str(c / TORCHVISION_FOLDERS[dataset] / "raw") for c in candidates)
    raise DataError(f"no {dataset} images found in {where}; pass --data-dir DIR or add --download")


def _download(dataset: str, root: Path) -> Path:
    import torchvision  # imported here: only a download needs it

    cls = torchvision.datasets.MNIST if dataset == "mnist" else torchvision.datasets.FashionMNIST
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # network and mirror errors come in many types
        raise DataError(f"could not download {dataset} into {root}: {exc}".splitlines()[0]) from exc
    return root


def read_idx_images(path: Path) -> torch.Tensor:
    """An IDX3 uint8 image file (raw or .gz beside it) -> [N, 1, H, W] uint8, checked for truncation."""
    data = _read_idx_bytes(path)
    if len(data) < 16 or data[:4] != b"\x00\x00\x08\x03":
        raise DataError(f"{path} is not an IDX image file (bad header); expected torchvision's MNIST layout")
    count, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    expected = 16 + count * rows * cols
    if len(data) != expected:
        raise DataError(f"{path} is truncated or corrupt: {len(data)} bytes, expected {expected} "
                        f"for {count} images of {rows}x{cols}")
    pixels = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, 1, rows, cols)
    return torch.from_numpy(pixels.copy())


def _read_idx_bytes(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes()
    packed = path.with_name(path.name + ".gz")
    if not packed.exists():
        raise DataError(f"missing data file {path} (nor {packed.name}); expected torchvision's MNIST layout")
    try:
        with gzip.open(packed, "rb") as handle:
            return handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{packed} is truncated or corrupt: {exc}") from exc


def load_image_folder(folder: Path, split: str) -> GoalSet:
    """Every image under `folder` (or `folder/train`, `folder/test` when those exist), all one size."""
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    if (folder / split).is_dir():
        folder = folder / split
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"image folder {folder} holds no images (expected {', '.join(IMAGE_SUFFIXES)})")
    arrays = [_read_image(files[0], None)]
    mode = "L" if arrays[0].shape[0] == 1 else "RGB"
    for path in files[1:]:
        array = _read_image(path, mode)
        if array.shape != arrays[0].shape:
            raise DataError(f"{path} is {_shape_text(array)} but {files[0].name} is {_shape_text(arrays[0])}; "
                            "all images in a folder must share one size")
        arrays.append(array)
    return GoalSet("folder", split, torch.from_numpy(np.stack(arrays)))


def _read_image(path: Path, mode: str | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # Pillow comes with torchvision

    try:
        with Image.open(path) as image:
            image = image.convert(mode or ("L" if image.mode in ("1", "L", "I", "I;16") else "RGB"))
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path} is not a readable image: {exc}") from exc
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy()


def _shape_text(array: np.ndarray) -> str:
    c, h, w = array.shape
    return f"{h}x{w}x{c}"
