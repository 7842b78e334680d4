"""Datasets as uint8 image tensors + labels, and device-resident weighted batching."""

from advcoreset.data.datasets import DataError, ImageArrays, dataset_stats, default_augment, load_dataset
from advcoreset.data.loader import Batch, iterate_batches, random_crop_flip, to_float
from advcoreset.data.sources import DatasetSource, DataSource, TensorSource, as_source
from advcoreset.data.splits import DataSplits, prepare_data, stratified_order

__all__ = ["Batch", "DataError", "DataSource", "DataSplits", "DatasetSource", "ImageArrays", "TensorSource",
           "as_source", "dataset_stats", "default_augment", "iterate_batches", "load_dataset", "prepare_data",
           "random_crop_flip", "stratified_order", "to_float"]
