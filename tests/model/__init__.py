"""Model tier: training, evaluation, calibration and behaviour of the trained model."""
