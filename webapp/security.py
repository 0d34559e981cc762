"""Who may drive the web app, and which files it may touch for them.

The threat model (README, "Security"): by default the app serves one local user on 127.0.0.1.
Then the danger is another web site in that user's browser: a page that posts to
``http://127.0.0.1:7860`` directly, or through DNS rebinding (its own name resolved to
127.0.0.1). :class:`RequestGuard` answers only requests addressed to the names the server was
started for and coming from its own pages. Exposed mode (``--listen`` or any non-loopback
``--host``) needs ``--auth``; then every path a web request names must lie inside the
workspace roots (:class:`Workspace`), symlinks resolved, because the people logged in are not
the owner of the machine.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

from engine.i18n import Explained

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class PathNotAllowed(Explained, ValueError):
    """A path from the web that lies outside the workspace roots of an exposed server."""


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """``"127.0.0.1:7860"`` -> ``"127.0.0.1"``, ``"[::1]:7860"`` -> ``"::1"``, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def allowed_host_names(bind: str, extra: Iterable[str] = ()) -> set[str]:
    """The Host names a request may carry: loopback always; when bound beyond loopback, the
    bound address, this machine's name and addresses, and the names given with --allowed-host."""
    names = {*LOOPBACK_NAMES, *(host_name(n) for n in extra)}
    if not is_loopback(bind):
        if bind not in ("0.0.0.0", "::"):
            names.add(host_name(bind))
        for name in {socket.gethostname(), socket.getfqdn()}:
            names.add(name.lower())
            try:
                names.update(info[4][0].lower() for info in socket.getaddrinfo(name, None))
            except OSError:
                pass
    return names


def _refusal(status: int, text: str):
    from starlette.responses import PlainTextResponse

    return PlainTextResponse(text, status_code=status)


class RequestGuard:
    """ASGI middleware in front of every route (pages, API, files, uploads):

    - the Host header must name this server (a DNS-rebinding page carries its own name);
    - an Origin header, when present, must be this server's own (no other site's page may post);
    - a cross-site subresource request (``<img>``, ``<script>``, a no-cors fetch from another
      site) is refused; following a link to the app (a top-level navigation) still works.
    """

    def __init__(self, app, allowed_hosts: set[str]) -> None:
        self.app = app
        self.allowed_hosts = {h.lower() for h in allowed_hosts}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            refusal = self.check({k.decode("latin-1").lower(): v.decode("latin-1")
                                  for k, v in scope.get("headers", [])})
            if refusal is not None:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await _refusal(*refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def check(self, headers: dict[str, str]) -> tuple[int, str] | None:
        """None when the request may pass, else (status, reason)."""
        host = headers.get("host", "")
        if host_name(host) not in self.allowed_hosts:
            return 421, (f"LoRA Forge does not answer for host {host!r}; open it at "
                         "http://127.0.0.1:<port>/ (or start it with --allowed-host NAME)")
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
                return 403, "requests from other web sites are refused"
        site, mode = headers.get("sec-fetch-site"), headers.get("sec-fetch-mode")
        if site == "cross-site" and mode != "navigate":
            return 403, "requests from other web sites are refused"
        return None


@dataclass
class Workspace:
    """Which paths the web app may use for its users.

    ``roots``: where a path from the web may point when the server is ``exposed``; a local
    server accepts any path its one user types. ``served`` is the list Gradio checks before it
    sends a file to the page (its ``allowed_paths``): it starts with the output folder and grows
    by each folder a request was allowed to use (a dataset's images, a grid's cells).
    """
    roots: list[Path]
    exposed: bool = False
    served: list[str] = field(default_factory=list)

    @classmethod
    def for_app(cls, exposed: bool = False, extra_roots: Iterable[str | Path] = ()) -> "Workspace":
        """The app's folder and its output folder, the folders named by --workspace and by
        LORAFORGE_WORKSPACE (separated by os.pathsep)."""
        from webapp.wizard_logic import ROOT, output_root

        env = [p for p in os.environ.get("LORAFORGE_WORKSPACE", "").split(os.pathsep) if p]
        roots = [Path(p).expanduser().resolve() for p in (ROOT, output_root(), *extra_roots, *env)]
        return cls(roots, exposed, [str(output_root())])

    def path(self, text: str | Path) -> Path:
        """The path a request names, as given (``~`` expanded); on an exposed server it must
        resolve (symlinks followed) inside a root."""
        raw = str(text).strip()
        path = Path(raw).expanduser()
        if self.exposed:
            real = path.resolve()
            if not raw or not any(real == r or real.is_relative_to(r) for r in self.roots):
                raise PathNotAllowed(f"{raw or '(empty)'} is outside the folders this server may use "
                                     f"({', '.join(str(r) for r in self.roots)})", "web_path_outside",
                                     path=raw or "-")
        return path

    def model(self, base: str) -> str:
        """A base model (or CLIP) reference: the embedded model and hub ids pass, a file or
        folder must be allowed like any path."""
        from engine.models.loader import EMBEDDED_NAMES, looks_like_path

        base = (base or "").strip()
        if base and base not in EMBEDDED_NAMES and looks_like_path(base):
            self.path(base)
        return base

    def serve(self, folder: str | Path) -> None:
        """Let Gradio send files from ``folder`` (already allowed by :meth:`path`)."""
        folder = str(Path(folder).expanduser().resolve())
        if folder not in self.served:
            self.served.append(folder)

    def job(self, cfg) -> None:
        """Every path of a job (engine.config.job marks them) must be allowed; the output folder
        is then served (samples, loss plot)."""
        from engine.config.base import path_values

        for kind, value in path_values(cfg):
            if kind == "model":
                self.model(value)
            else:
                self.path(value)
        self.serve(cfg.output.dir)


LOCAL = Workspace([])  # a local server's rule: any path its one user types
