"""Job schema: one TOML file describes one training job (job.py), the preset tiers and the
shared presets built on it."""
