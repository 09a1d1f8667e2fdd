"""The Jinja2 environment, loaded only when the admin page is made.

Jinja2 is the optional extra ``admin``: ``import tokenstore.admin`` works
without it, and making the page says which extra to install.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import tokenstore

if TYPE_CHECKING:
    import jinja2


class AdminUnavailable(tokenstore.TokenstoreError, ImportError):
    """The admin page needs Jinja2, from the optional extra ``tokenstore[admin]``."""


def environment() -> jinja2.Environment:
    """Templates from the package, every value escaped unless a template says otherwise."""
    try:
        import jinja2
    except ImportError:
        raise AdminUnavailable(
            "the admin page needs Jinja2: pip install 'tokenstore[admin]'"
        ) from None
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tokenstore.admin", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    return env


def when(value: datetime | None) -> str:
    """A stored time as people read it: UTC to the second."""
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")
