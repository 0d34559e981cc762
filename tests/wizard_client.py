"""Driving the wizard through gradio_client the way a script would: the session's one job is
edited with the set_* endpoints (or set_job_toml), then checked, started and watched."""
from __future__ import annotations

import time

import tomli_w


class Wizard:
    """One page session (gradio_client keeps one session per Client)."""

    def __init__(self, client) -> None:
        self.client = client

    def __call__(self, *args, api_name: str):
        return self.client.predict(*args, api_name=api_name)

    def set_job(self, job: dict):
        """Paste a whole job into the expert view; returns the rendered views (last: summary)."""
        return self(tomli_w.dumps(job), api_name="/set_job_toml")

    def set(self, path: str, value):
        """One field, as typed into the form (``training.epochs``)."""
        section, name = path.split(".")
        return self(value, api_name=f"/set_{section}_{name}")

    def job_toml(self) -> str:
        return self(api_name="/check_job")[-4]

    def check(self) -> str:
        return self(api_name="/check_job")[0]

    def start(self) -> str:
        return self(api_name="/start_training")[0]

    def status(self) -> tuple:
        """(message, progress bar html, progress line, log, loss frame, samples, saved files)."""
        return self(api_name="/status")[:7]

    def wait(self, timeout: float = 600) -> tuple:
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = self.status()
            if not out[2].startswith(("running", "idle", "运行中", "空闲")):
                return out
            time.sleep(0.5)
        raise AssertionError("training did not finish")
