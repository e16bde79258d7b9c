"""Segmentation networks built from the LoG-VMamba blocks."""
