"""The admin HTTP listener: Prometheus /metrics, a health check and the JSON API (/api)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from ipaddress import IPv4Network, IPv6Network

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.config.units import HostPort


def admin_app(healthy: Callable[[], bool], api: FastAPI | None = None) -> FastAPI:
    """``api`` (gateway.web.api.admin_api) is served under /api; without it /api is 404."""
    app = FastAPI(title="smtp-gateway admin", docs_url=None, redoc_url=None)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def health() -> Response:
        ok = healthy()
        return Response("ok\n" if ok else "starting or stopping\n", status_code=200 if ok else 503,
                        media_type="text/plain")

    if api is not None:
        app.mount("/api", api)
    return app


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside the gateway's own event loop; the gateway owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    @property
    def port(self) -> int | None:
        """The bound port once serving (useful with port 0)."""
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return None


def embedded_server(app: FastAPI, endpoint: HostPort,
                    trusted_proxies: Sequence[IPv4Network | IPv6Network] = ()) -> EmbeddedServer:
    """X-Forwarded-For is believed only from ``trusted_proxies`` ([http] trusted_proxies);
    without them it is ignored, since any client can send it."""
    config = uvicorn.Config(app, host=endpoint.host, port=endpoint.port, log_level="warning",
                            access_log=False, lifespan="off", proxy_headers=bool(trusted_proxies),
                            forwarded_allow_ips=[str(network) for network in trusted_proxies] or "")
    return EmbeddedServer(config)
