"""Predictors learned from measurements: latency per device, accuracy per supernet."""
