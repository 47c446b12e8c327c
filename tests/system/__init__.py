"""System tier: the real test fleet (sshd in namespaces, adb, emulated ARM boards)."""
