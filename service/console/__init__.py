"""The web console at /console: server-rendered pages (Jinja2 + htmx) over the engine's
public API, behind a login with the keys file's console users. `console_routes(service)`
gives the routes `create_app` adds."""

from .views import console_routes

__all__ = ["console_routes"]
