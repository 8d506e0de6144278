"""Datasets, samplers and batched augmentations (torch); reading and checking rows is torchfree.data."""
