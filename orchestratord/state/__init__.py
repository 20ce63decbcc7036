"""The state interface and its backends."""
