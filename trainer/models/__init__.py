"""Recommender networks (nn.Modules) and their config dataclasses."""
