"""Stage 3, evaluation: the evaluate step (test metrics, plots, Grad-CAM, report) and
``lesionpipe predict``. Imports the basics, data, scoring and training."""
