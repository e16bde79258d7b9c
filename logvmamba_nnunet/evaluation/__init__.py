"""Segmentation metrics (Dice, IoU, HD95, NSD) and dataset converters for the paper's datasets."""
