"""Unit tier: no root, no TensorFlow, no device process, no training (make check)."""
