"""Datasets: the registry, loaders and the in-memory :class:`ImageDataset`."""

from ddkit.data.dataset import ImageDataset
from ddkit.data.registry import DATASETS, DatasetInfo, dataset_status, load_dataset

__all__ = ["DATASETS", "DatasetInfo", "ImageDataset", "dataset_status", "load_dataset"]
