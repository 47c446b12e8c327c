"""Measurement: benchmark backends on a device, campaigns, adaptive few-shot rounds."""
