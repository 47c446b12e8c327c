"""Data sets, progressive-shrinking training, BN-recalibrated evaluation, fine-tuning."""
