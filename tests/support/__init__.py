"""What the tests share: the real test fleet, model folders, the CLI runner."""
