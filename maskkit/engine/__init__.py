"""The training engine: optimizer and schedule, checkpoints, distribution, and the loop itself."""
