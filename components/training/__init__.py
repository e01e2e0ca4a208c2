"""Stage 2, training: models and backbones, ImageNet weights, the input pipeline,
imbalance remedies, callbacks, learning rate, devices, the train step, the TFJob chief,
and logging a train output folder's model to MLflow. Imports the basics, data and scoring."""
