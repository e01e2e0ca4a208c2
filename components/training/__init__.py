"""Stage 2, training: models and backbones, ImageNet weights, the input pipeline,
imbalance remedies, callbacks, learning rate, devices, the train step and the TFJob
chief. Imports the basics, data and scoring."""
