"""Operating Redis: finding the binary, running node processes, config profiles, preflight."""
