"""Images from a base model and add-on files: sampler, prompts, grids, swappers."""
