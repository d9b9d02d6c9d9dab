"""Data: samples, batches, synthetic scenes, on-disk dataset readers and writers."""

from mtal_models.data.sample import Batch, Sample, collate

__all__ = ["Batch", "Sample", "collate"]
