"""The training run: setup from a job, the loop, its state, guards and reports."""
