"""The headless commands (launcher.py) on the same engine as the web app."""
