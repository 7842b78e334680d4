"""Datasets as uint8 image tensors + labels, and device-resident weighted batching (one rank's part of every
global batch in a world > 1)."""

from advcoreset.data.datasets import DataError, ImageArrays, dataset_stats, default_augment, load_dataset
from advcoreset.data.loader import Batch, Part, iterate_batches, random_crop_flip, rank_part, to_float
from advcoreset.data.sources import DatasetSource, DataSource, TensorSource, as_source
from advcoreset.data.splits import DataSplits, prepare_data, stratified_order

__all__ = ["Batch", "DataError", "DataSource", "DataSplits", "DatasetSource", "ImageArrays", "Part", "TensorSource",
           "as_source", "dataset_stats", "default_augment", "iterate_batches", "load_dataset", "prepare_data",
           "random_crop_flip", "rank_part", "stratified_order", "to_float"]
