"""A run's life on disk: its folder, the checks before resuming into it, the lock while it runs and the marks
a failed run leaves."""
