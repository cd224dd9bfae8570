"""Image-classification data for the vision KD loop: ImageFolder (ImageNet) or the embedded digits set.

ImageNet (``train/`` and ``val/`` in ImageFolder layout, one folder per class) uses the standard recipe:
RandomResizedCrop 224 + horizontal flip for training, resize 256 / center-crop 224 for validation,
normalised with the ImageNet mean and std::

    accelerate launch run_scripts/run_resnet_kd.py --train_dir /data/imagenet/train --val_dir /data/imagenet/val ...

Without data flags the run uses scikit-learn's handwritten digits (1,797 8x8 grey images, 10 classes, shipped
with scikit-learn, so it works offline), upscaled to 32x32 with 3 channels and split stratified into
train/validation -- small enough to train a ResNet on a CPU in a minute::

    python run_scripts/run_resnet_kd.py --model resnet18 --output_dir runs/digits
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from ..core.errors import DataError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_IMAGE_SIZE = 32
IMAGEFOLDER_IMAGE_SIZE = 224


@dataclass
class VisionDataArguments:
    """Where the images come from and how they are loaded."""

    train_dir: str | None = field(
        default=None,
        metadata={"help": "Training images in ImageFolder layout (<train_dir>/<class>/<image>), e.g. ImageNet's "
                  "train/. Unset (with --val_dir unset) = the embedded scikit-learn digits set (offline, CPU-sized)."},
    )
    val_dir: str | None = field(
        default=None,
        metadata={"help": "Validation images in ImageFolder layout with the same class folders as --train_dir."},
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Training crop / validation crop size in pixels. Default: 224 for ImageFolder data "
                  "(the standard ImageNet recipe), 32 for the digits (upscaled from 8x8)."},
    )
    val_resize_size: int | None = field(
        default=None,
        metadata={"help": "ImageFolder validation: resize the short side to this before the center crop. Default: "
                  "image_size * 256 / 224 (256 for 224 crops, the standard recipe)."},
    )
    num_workers: int | None = field(
        default=None,
        metadata={"help": "DataLoader worker processes per training process. Default: 8 for ImageFolder data "
                  "(JPEG decoding is the usual ImageNet bottleneck), 0 for the in-memory digits."},
    )
    digits_val_fraction: float = field(
        default=0.2,
        metadata={"help": "Digits only: fraction of the 1,797 images held out for validation (stratified by "
                  "class, fixed split seed so every run evaluates on the same images)."},
    )

    def __post_init__(self):
        if (self.train_dir is None) != (self.val_dir is None):
            raise DataError("--train_dir and --val_dir go together: pass both (ImageFolder data) or neither (digits)")
        if self.image_size is not None and self.image_size < 8:
            raise DataError(f"image_size={self.image_size} is invalid: expected at least 8 pixels")
        if not 0.0 < self.digits_val_fraction < 1.0:
            raise DataError(f"digits_val_fraction={self.digits_val_fraction} is invalid: expected a fraction in (0, 1)")
        if self.num_workers is not None and self.num_workers < 0:
            raise DataError(f"num_workers={self.num_workers} is invalid: expected an integer >= 0")

    @property
    def uses_digits(self) -> bool:
        return self.train_dir is None


@dataclass
class VisionData:
    """The two splits and what the model needs to know about them."""

    train: Dataset
    val: Dataset
    num_classes: int
    image_size: int
    source: str
    mean: tuple[float, ...] = IMAGENET_MEAN  # the input normalisation, recorded in the model's config.json
    std: tuple[float, ...] = IMAGENET_STD
    label_names: list[str] | None = None  # class index -> name (ImageFolder: the class folders, sorted)


def load_digits_splits(image_size: int = DIGITS_IMAGE_SIZE, val_fraction: float = 0.2) -> VisionData:
    """scikit-learn's digits as normalised ``[3, image_size, image_size]`` float tensors, split stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values are 0..16
    labels = torch.tensor(digits.target, dtype=torch.long)
    # Fixed split seed: the validation set must not change with the training seed, or curves are not comparable.
    train_idx, val_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=val_fraction, stratify=labels.numpy(), random_state=0)
    images = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear",
                                             align_corners=False).repeat(1, 3, 1, 1)
    train_images = images[train_idx]
    mean, std = train_images.mean(), train_images.std()  # training-split statistics only
    images = (images - mean) / std
    return VisionData(
        train=TensorDataset(images[train_idx], labels[train_idx]),
        val=TensorDataset(images[val_idx], labels[val_idx]),
        num_classes=int(labels.max()) + 1, image_size=image_size, source="sklearn digits",
        mean=(float(mean),) * 3, std=(float(std),) * 3, label_names=[str(d) for d in range(10)])


def imagenet_transforms(image_size: int, val_resize_size: int | None = None):
    """The standard ImageNet train/validation transforms (torchvision reference recipe)."""
    from torchvision import transforms as T

    resize = val_resize_size or round(image_size * 256 / 224)
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    val = T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(), normalize])
    return train, val


def load_imagefolder_splits(train_dir: str, val_dir: str, image_size: int = IMAGEFOLDER_IMAGE_SIZE,
                            val_resize_size: int | None = None) -> VisionData:
    """Two ImageFolder datasets with the standard transforms; their class folders must be identical."""
    from torchvision.datasets import ImageFolder

    train_tf, val_tf = imagenet_transforms(image_size, val_resize_size)
    splits = []
    for name, path, tf in (("train_dir", train_dir, train_tf), ("val_dir", val_dir, val_tf)):
        if not Path(path).is_dir():
            raise DataError(f"{name} {path!r} is not a folder; expected ImageFolder layout <dir>/<class>/<image>")
        try:
            splits.append(ImageFolder(path, transform=tf))
        except (FileNotFoundError, RuntimeError) as e:
            raise DataError(f"{name} {path!r} is not usable ImageFolder data: {str(e).splitlines()[0]}") from e
    train, val = splits
    if train.classes != val.classes:
        missing = sorted(set(train.classes) ^ set(val.classes))[:3]
        raise DataError(f"train_dir and val_dir have different class folders (e.g. {missing}); they must match")
    return VisionData(train=train, val=val, num_classes=len(train.classes), image_size=image_size,
                      source=f"ImageFolder {train_dir}", label_names=list(train.classes))


def build_datasets(args: VisionDataArguments) -> VisionData:
    """The datasets ``args`` asks for (digits when no folders are given)."""
    if args.uses_digits:
        return load_digits_splits(args.image_size or DIGITS_IMAGE_SIZE, args.digits_val_fraction)
    return load_imagefolder_splits(args.train_dir, args.val_dir, args.image_size or IMAGEFOLDER_IMAGE_SIZE,
                                   args.val_resize_size)


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(n)`` that is a pure function of ``(seed, epoch)``.

    Being pure (like ``schedule.teacher_indices``) is what makes every rank shard the same order and a resumed run
    see exactly the batches the interrupted one would have -- nothing to checkpoint or synchronise. (accelerate's
    own seedable sampler would instead pickle itself, dataset included, into every checkpoint.)
    """

    def __init__(self, num_items: int, seed: int = 0):
        self.num_items = int(num_items)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_items, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_items


def build_dataloaders(data: VisionData, args: VisionDataArguments, train_batch_size: int, eval_batch_size: int,
                      seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Per-process loaders, before ``accelerator.prepare`` shards them.

    Training shuffles with :class:`EpochShuffleSampler` (call ``train.sampler.set_epoch``) and drops the last
    incomplete batch (every rank then sees equal, full batches, as DDP's BatchNorm and the step-level loss
    denominator expect); validation keeps every image -- ``gather_for_metrics`` later removes the duplicates that
    sharding pads in, so each image counts exactly once.
    """
    workers = args.num_workers if args.num_workers is not None else (0 if args.uses_digits else 8)
    if len(data.train) < train_batch_size:
        raise DataError(f"the training split has {len(data.train)} images, fewer than one batch of {train_batch_size}")
    common = {"num_workers": workers, "pin_memory": torch.cuda.is_available(), "persistent_workers": workers > 0}
    sampler = EpochShuffleSampler(len(data.train), seed)
    train = DataLoader(data.train, batch_size=train_batch_size, sampler=sampler, drop_last=True, **common)
    val = DataLoader(data.val, batch_size=eval_batch_size, shuffle=False, drop_last=False, **common)
    return train, val
