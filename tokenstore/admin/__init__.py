"""The admin page: users, API tokens, webhooks and their deliveries in a browser.

    app = tokenstore.admin.make_app(store)       # a WSGI app to mount anywhere
    tokenstore serve --port 8787                 # or serve it on 127.0.0.1

A visitor signs in with an API token of the store itself (scope ``admin``,
or a superuser's token without scopes). It needs the optional extra
``tokenstore[admin]`` (Jinja2); without it ``make_app`` raises
``AdminUnavailable`` naming the extra. See docs/admin.md.
"""

from ._app import ADMIN_SCOPE, AdminApp, grants_admin, make_app
from ._server import AdminServer, make_admin_server, public_warning
from ._templates import AdminUnavailable

__all__ = [
    "ADMIN_SCOPE",
    "AdminApp",
    "AdminServer",
    "AdminUnavailable",
    "grants_admin",
    "make_admin_server",
    "make_app",
    "public_warning",
]
