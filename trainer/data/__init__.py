"""Interaction logs: readers, preprocessing, splits and the dataset artifact."""
