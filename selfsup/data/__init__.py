"""Datasets as uint8 arrays, format loaders and batch sampling (see :func:`load_data`)."""

from .arrays import DataSplits, ImageArray, as_nchw_uint8, build_splits, is_memory_mapped, resize_center_crop
from .cifar import SafeUnpickler, load_cifar, safe_unpickle
from .digit_scenes import SegmentationArray, load_digit_scenes
from .digits import load_digits_splits
from .errors import DataError, DataPathError, DataWarning
from .formats import FORMATS, detect_format, load_data, load_data_section
from .imagefolder import DEFAULT_IMAGEFOLDER_SIZE, IMAGE_EXTENSIONS, load_imagefolder
from .loader import EpochSampler, Prefetcher, check_batch_size, sequential_batches
from .stream import StreamLoader, StreamSplit, auto_num_workers, default_num_workers
from .npz import load_idx, load_npz, read_idx, save_npz

__all__ = [
    "DEFAULT_IMAGEFOLDER_SIZE",
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "DataError",
    "DataPathError",
    "DataWarning",
    "DataSplits",
    "EpochSampler",
    "ImageArray",
    "Prefetcher",
    "SafeUnpickler",
    "SegmentationArray",
    "as_nchw_uint8",
    "build_splits",
    "check_batch_size",
    "detect_format",
    "is_memory_mapped",
    "load_cifar",
    "load_data",
    "load_data_section",
    "StreamLoader",
    "StreamSplit",
    "auto_num_workers",
    "default_num_workers",
    "load_digit_scenes",
    "load_digits_splits",
    "load_idx",
    "load_imagefolder",
    "load_npz",
    "read_idx",
    "resize_center_crop",
    "safe_unpickle",
    "save_npz",
    "sequential_batches",
]
