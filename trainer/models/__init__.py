"""Recommender networks (nn.Modules), their config dataclasses, the model contract they share and the registry."""
