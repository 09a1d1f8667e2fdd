"""The Jinja2 environment, loaded only when the admin page is made.

Jinja2 is the optional extra ``admin``: ``import tokenstore.admin`` works
without it, and making the page says which extra to install.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

import tokenstore
from tokenstore._errors import HIDDEN_CHARACTERS

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
        finalize=visible,
    )
    env.filters["when"] = when
    # A form field's value exactly as stored, so saving the form unchanged changes nothing:
    # escaped into Markup, which ``visible`` leaves alone.
    env.filters["as_stored"] = env.filters["escape"]
    return env


_HIDDEN = re.compile(f"[{HIDDEN_CHARACTERS}]")


def visible(value: Any) -> Any:
    """Every value a page shows, with invisible and text-reordering characters spelled out.

    A hook name, endpoint or reason may hold a right-to-left override, which
    would make the page show something other than what is stored (an ABID
    reversed in "Delete webhook NAME (ABID)?"), or control characters that
    show as nothing. They appear as ``\\u202e``. Values already marked safe
    (form fields, through the ``as_stored`` filter) are left alone.
    """
    if isinstance(value, str) and not hasattr(value, "__html__"):
        return _HIDDEN.sub(lambda found: f"\\u{ord(found[0]):04x}", value)
    return value


def when(value: datetime | None) -> str:
    """A stored time as people read it: UTC to the second."""
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")
