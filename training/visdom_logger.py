"""Live training curves on a Visdom dashboard (visdom 0.2.4, https://github.com/fossasia/visdom).

    logger = VisdomLogger(env="arcface_r50")
    logger.log_scalar("loss", step, loss, trace="train")
    logger.log_scalar("loss", step, val_loss, trace="val")   # second curve in the same window
    logger.close()

Each window is a line plot; each trace is one named curve in it. The logger must never slow down
or break training: when no server answers (none started, wrong port, server gone mid-run) it
warns once, naming the URL and how to start `tools/monitor/visdom_server.py`, and every later call
returns at once. Every HTTP request carries a timeout, because visdom's own client posts
without one and would block forever on a server that accepts but never answers.
"""

import logging
import socket
import warnings
from urllib.parse import urlparse

import numpy as np
import requests
import visdom


class _VisdomWithTimeout(visdom.Visdom):
    """visdom's client, sending each request through our session with a timeout.

    `_handle_post` is the hook visdom documents for replacing its transport.
    """

    def __init__(self, timeout_s, **kwargs):
        # Set before visdom's __init__, which already posts (it registers the env).
        self._http = requests.Session()
        self._timeout_s = timeout_s
        super().__init__(**kwargs)

    def _handle_post(self, url, data=None):
        response = self._http.post(url, data=data or {}, timeout=self._timeout_s)
        response.raise_for_status()
        return response.text


class VisdomLogger:
    """Append scalars to Visdom line plots, or do nothing if no Visdom server is reachable."""

    def __init__(self, env: str, server: str = "http://127.0.0.1", port: int = 8097,
                 enabled: bool = True, timeout_s: float = 2.0):
        self.env = env
        self.port = port
        self.url = f"{server.rstrip('/')}:{port}"
        self._timeout_s = timeout_s
        self._vis = None
        self._traces = {}  # window -> names of the traces this logger has drawn in it
        if not enabled:
            return
        host = urlparse(server if "://" in server else f"http://{server}").hostname
        try:
            # A refused or unroutable port fails here within timeout_s; visdom's client would
            # instead print a traceback per call, and its socket thread would retry forever.
            socket.create_connection((host, port), timeout=timeout_s).close()
            self._vis = self._connect(server, port)
        except (OSError, ConnectionError) as error:
            self._give_up(error)

    def _connect(self, server, port):
        visdom_log = logging.getLogger("visdom")
        previous_level = visdom_log.level
        # Without the incoming socket visdom logs that it cannot receive browser events, which
        # this write-only logger never needs (the socket would cost a thread and a wait of up
        # to 5 s at start-up), and it logs that through the deprecated Logger.warn.
        visdom_log.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning, module="visdom")
                return _VisdomWithTimeout(timeout_s=self._timeout_s, server=server, port=port,
                                          env=self.env, raise_exceptions=True,
                                          use_incoming_socket=False)
        finally:
            visdom_log.setLevel(previous_level)

    def _give_up(self, error):
        if self._vis is not None:
            self._vis._http.close()
            self._vis = None
        warnings.warn(
            f"Visdom server not reachable at {self.url} ({error}); live curves are off for "
            f"env '{self.env}'. Start the offline server with "
            f"`python tools/monitor/visdom_server.py --port {self.port}`.",
            RuntimeWarning, stacklevel=3)

    @property
    def active(self) -> bool:
        return self._vis is not None

    def log_scalar(self, window: str, step: int, value: float, trace: str | None = None):
        """Append (step, value) to curve `trace` (default: the window's name) in `window`."""
        if self._vis is None:
            return
        trace = window if trace is None else trace
        drawn = self._traces.setdefault(window, set())
        x, y = np.array([int(step)]), np.array([float(value)])
        try:
            if drawn:
                # An unknown trace name makes visdom add it as a new curve to the window.
                self._vis.line(Y=y, X=x, win=window, env=self.env, update="append", name=trace)
            else:
                # The first point replaces any window of that name left over from an earlier run.
                self._vis.line(Y=y, X=x, win=window, env=self.env, name=trace,
                               opts={"title": window, "xlabel": "step", "showlegend": True})
        except (ConnectionError, requests.RequestException) as error:
            self._give_up(error)
            return
        drawn.add(trace)

    def close(self):
        """Save the env to the server's --env-path (it survives a restart) and stop logging."""
        if self._vis is None:
            return
        try:
            self._vis.save([self.env])
        except (ConnectionError, requests.RequestException) as error:
            self._give_up(error)
            return
        self._vis._http.close()
        self._vis = None
