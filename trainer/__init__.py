"""Training stage: data, models, fit loop and evaluation."""
