"""Model architectures of the built-in zoo."""
