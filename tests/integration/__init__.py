"""Integration tier: real TFLite runtimes, training, exports, the CLI as a process, SQLite."""
