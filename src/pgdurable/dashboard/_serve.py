"""Serving the dashboard with uvicorn, after the checks that keep it safe by default."""

from __future__ import annotations

from ._app import create_app
from ._security import check_bind

DEFAULT_PORT = 8471


def serve(
    dsn: str,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    read_only: bool = False,
    token: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve the dashboard until interrupted. Refuses (InsecureBind) to listen beyond loopback
    without a token."""
    check_bind(host, token)
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(
            f'serving the dashboard needs uvicorn: pip install "pgdurable[dashboard]" ({exc})'
        ) from exc
    app = create_app(dsn, read_only=read_only, auth=token)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        proxy_headers=False,
        access_log=log_level == "debug",
    )
