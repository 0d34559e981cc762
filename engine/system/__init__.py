"""This machine: hardware probe, preset tier, environment doctor."""
