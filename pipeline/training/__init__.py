"""Training core (torch/numpy only): optimisers, schedules and the training loop."""
