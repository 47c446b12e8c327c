"""Foundation shared by every layer: errors, paths, private files, progress events."""
