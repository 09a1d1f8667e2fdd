"""What a page handler is given: the request, its signed-in session, the store, the templates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tokenstore

from ._http import Request, Response, redirect
from ._sessions import Session, new_form_id


@dataclass
class Visit:
    """One request of a session: what a page handler needs to answer it."""

    request: Request
    session: Session
    owner: tokenstore.User  # whose token signed in
    store: tokenstore.Store
    templates: Any  # jinja2.Environment, imported only when the page is made

    def url(self, path: str) -> str:
        return self.request.base + path

    def render(self, template: str, **context: Any) -> Response:
        """A page; one shown again with the error of a refused change is a 400."""
        context.setdefault("error", "")
        status = 400 if context["error"] else 200
        session, head = self.session, self.request.head  # HEAD leaves them for the next page
        html = self.templates.get_template(template).render(
            base=self.request.base,
            csrf=session.csrf,
            admin=self.owner,
            notice=session.notice if head else session.take_notice(),
            reveal=session.reveal if head else session.take_reveal(),
            **context,
        )
        return Response(status, html.encode("utf-8"))

    def form_id(self) -> str:
        """A one-time id for a form on this page; kept by the session unless the page is
        asked for by HEAD, whose form nobody will ever send."""
        return new_form_id() if self.request.head else self.session.keep_form()

    def done(self, path: str, notice: str) -> Response:
        """Redirect after a change, with a line saying what was done on the next page."""
        self.session.notice = notice
        return redirect(self.url(path))
