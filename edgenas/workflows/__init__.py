"""End-to-end workflows over every layer: quickstart, report, exported-model accuracy."""
