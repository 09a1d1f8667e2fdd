"""The blinker signals tokenstore sends, and the one way it sends them.

The sender of every model signal is the model class, so a receiver can listen
to one model (``post_save.connect(fn, sender=APIToken)``) or to all of them.
Receivers are isolated from each other and from the write that caused them: a
receiver that raises is logged and the rest still run.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from blinker import Namespace, Signal

from . import _compat
from ._inputs import check_instance

logger = logging.getLogger("tokenstore.signals")

namespace = Namespace()

pre_save = namespace.signal(
    "pre_save",
    doc="Before save() writes an ABIDModel or a tokenstore model (instance, created).",
)
pre_delete = namespace.signal(
    "pre_delete",
    doc="Before delete_instance() deletes an ABIDModel or a tokenstore model (instance).",
)
post_save = namespace.signal(
    "post_save",
    doc="After a committed insert or update is dispatched (instance, created, event).",
)
post_delete = namespace.signal(
    "post_delete", doc="After a committed delete is dispatched (instance, event)."
)
row_changed = namespace.signal(
    "row_changed", doc="After any committed change is dispatched (event)."
)
m2m_changed = namespace.signal(
    "m2m_changed",
    doc="After a committed relation change is dispatched (instance, field, action, pks).",
)
webhook_delivered = namespace.signal(
    "webhook_delivered", doc="A delivery attempt got a 2xx answer (hook, delivery)."
)
webhook_failed = namespace.signal(
    "webhook_failed", doc="A delivery attempt failed (hook, delivery, error)."
)
webhook_disabled = namespace.signal(
    "webhook_disabled", doc="A hook was disabled after failures or a 410 (hook, reason)."
)

#: The signals fired from change events; if none has a receiver, events are dropped early.
EVENT_SIGNALS = (post_save, post_delete, row_changed, m2m_changed)


def any_event_receivers() -> bool:
    """Whether this process listens for change events at all (so capture must record them).

    A muted signal calls no one (``send_isolated``), so its receivers do not
    count: events claimed for them would be dropped unheard, and taken from
    the processes that do listen.
    """
    return any(not signal.is_muted and _compat.is_connected(signal) for signal in EVENT_SIGNALS)


def send_isolated(signal: Signal, sender: Any, **kwargs: Any) -> None:
    """Call every receiver, logging (not raising) what any of them raises.

    blinker's own ``send`` stops at the first exception; here one faulty
    receiver must not cost the others their call, nor the application its write.
    Otherwise it is ``send``: a muted signal calls no one, and a coroutine
    function, which ``send`` refuses, is skipped with an error in the log
    (called, it would only make a coroutine that nothing runs).
    """
    check_instance(signal, Signal, "signal")
    if not signal.receivers or signal.is_muted:
        return
    for receiver in signal.receivers_for(sender):
        if inspect.iscoroutinefunction(receiver):
            logger.error(
                "receiver %r of signal %r is a coroutine function; tokenstore sends "
                "signals synchronously, so it is not called",
                receiver,
                getattr(signal, "name", signal),
            )
            continue
        try:
            receiver(sender, **kwargs)
        except Exception:
            logger.exception(
                "receiver %r of signal %r raised", receiver, getattr(signal, "name", signal)
            )
