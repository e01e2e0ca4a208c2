"""How a trained model is scored, shared by training (validation) and evaluation: load
a model from any URI, class probabilities (with TTA), decision offsets, metrics.
Imports the basics and data."""
