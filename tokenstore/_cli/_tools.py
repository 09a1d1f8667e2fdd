"""The tools beside the store: ``listen`` (a webhook receiver), ``serve`` (the admin page)
and ``demo``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from datetime import timedelta
from typing import Any

from .._credentials import SECRET_FORM, SECRET_PREFIX
from .._errors import ValidationError
from .._hook_rules import MIN_SECRET_BYTES
from .._inputs import check_path
from .._servers import check_listen_host
from .._signing import signing_key
from ._base import Commands, _command, _open
from ._output import Output, one_line
from ._values import _duration_type, _port, _secret

#: The most a --secret-file is read; a whsec_ secret is well under a hundred bytes.
_SECRET_FILE_BYTES = 4096

_GIVE = f"give the hook's signing secret: {SECRET_FORM}, as webhooks create printed it"


def listen_secret(args: argparse.Namespace) -> str:
    """The signing secret ``listen`` verifies with, kept out of argv where it can be.

    A secret given with ``--secret`` is visible to anyone running ``ps``; the
    environment and a file (or stdin) are not.
    """
    if args.secret is not None and args.secret_file is not None:
        raise ValidationError("give the signing secret with --secret or --secret-file, not both")
    if args.secret_file is not None:
        source = f"--secret-file {args.secret_file}".rstrip()
        secret = _read_secret_file(args.secret_file, source)
    elif args.secret is not None:
        secret, source = _secret(args.secret), "--secret"
    else:
        secret, source = os.environ.get("TOKENSTORE_LISTEN_SECRET", ""), "$TOKENSTORE_LISTEN_SECRET"
    if not secret and args.secret is None and args.secret_file is None:
        raise ValidationError(
            "listen needs the hook's signing secret: set TOKENSTORE_LISTEN_SECRET "
            "or pass --secret-file PATH (- reads it from stdin)"
        )
    if not secret:  # `--secret-file "$FILE"` with $FILE unset, or a file left empty
        raise ValidationError(f"{source} is empty: {_GIVE}")
    if not secret.startswith(SECRET_PREFIX):
        raise ValidationError(f"that is no signing secret: {_GIVE}")
    key = signing_key(secret)
    if len(key) < MIN_SECRET_BYTES:  # every webhook would fail to verify: say so at the start
        raise ValidationError(
            f"the signing secret of {source} is {len(key)} bytes once decoded: a hook's "
            f"secret has at least {MIN_SECRET_BYTES}, as Standard Webhooks asks (not shown)"
        )
    return secret


def _read_secret_file(path: str, source: str) -> str:
    """The secret in the file at ``path`` (``-``: stdin), stripped; empty for no path."""
    if path == "-":
        return _secret("-")
    if not path:
        return ""
    try:
        with check_path(path, source).open("rb") as file:
            data = file.read(_SECRET_FILE_BYTES + 1)  # /dev/zero would never end
    except OSError as exc:
        raise ValidationError(f"{source}: {exc.strerror}") from None
    if len(data) > _SECRET_FILE_BYTES:
        raise ValidationError(
            f"{source} holds over {_SECRET_FILE_BYTES} bytes: a signing secret is one short line"
        )
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValidationError(f"{source} is not UTF-8 text") from None


def cmd_listen(args: argparse.Namespace, out: Output) -> int:
    """``tokenstore.make_receiver``: print each webhook that verifies, until Ctrl-C."""
    from .._receiver import make_receiver

    printing = threading.Lock()

    def show(payload: dict[str, Any], headers: Any) -> None:
        # Events arrive on several threads: each is written whole, under a lock, and
        # flushed, so a script reading the pipe sees it at once and never half of two.
        if out.as_json:
            text = json.dumps({"webhook_id": headers.get("webhook-id"), "payload": payload})
        else:
            # The sender chose the id and the type: a line break or an escape sequence
            # in them is shown escaped, or it could forge lines or drive the terminal.
            shown = f"{headers.get('webhook-id')} {payload.get('type')}"
            text = f"{one_line(shown)} verified\n"
            text += json.dumps(payload, indent=2)
        with printing:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    check_listen_host(args.host, "--host")  # named as the command spells it
    tolerance = round(args.tolerance.total_seconds())
    server = make_receiver(args.host, args.port, listen_secret(args), show, tolerance=tolerance)
    url = _served_url(args.host, server)
    print(f"listening on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    _serve_until_interrupted(server)
    return 0


def _served_url(host: str, server: Any) -> str:
    """The URL a server listening on ``host`` answers at: an IPv6 address in brackets, and
    nothing else (the socket drops brackets given around an IPv4 address or a name)."""
    bare = host.strip("[]")
    shown = f"[{bare}]" if ":" in bare else bare
    return f"http://{shown}:{server.server_address[1]}/"


def _serve_until_interrupted(server: Any) -> None:
    """Serve until Ctrl-C, then close the socket."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    """Serve the admin page until Ctrl-C."""
    from ..admin import make_admin_server, public_warning

    with _open(args, browse=True) as store:
        server = make_admin_server(store, args.host, args.port, public=args.public)
        warning = public_warning(args.host)
        if warning:
            print(warning, file=sys.stderr)
        url = _served_url(args.host, server)
        print(f"admin page on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        _serve_until_interrupted(server)
    return 0


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    """Run the demo on a throwaway file."""
    from .._demo import run_demo

    if out.as_json:
        raise ValidationError("demo tells its story as text: --json does not apply to it")
    if args.dir == "":  # `--dir "$DIR"` with $DIR unset: not a reason to pick a folder
        raise ValidationError("--dir is empty: name the folder, or leave --dir out for a new one")
    return run_demo(args.dir)


def add_tool_commands(commands: Commands) -> None:
    """``tokenstore listen``, ``serve`` and ``demo``."""
    p = _command(
        commands,
        "listen",
        cmd_listen,
        "tokenstore.make_receiver",
        "receive webhooks, verify their signatures and print them",
        prints="Says 'listening on URL' on stderr, then prints each request that verifies: "
        "'WEBHOOK_ID TYPE verified' and its JSON body (with --json, one JSON line each). "
        "Requests that do not verify are answered 4xx and not printed. Runs until Ctrl-C, "
        "which exits 0.",
    )
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=_port, default=8787, help="the port; 0 picks a free one")
    p.add_argument(
        "--secret",
        help="the hook's whsec_... signing secret, or - to read it from stdin "
        "(in argv, a secret shows in ps: prefer $TOKENSTORE_LISTEN_SECRET or --secret-file) "
        "(default: $TOKENSTORE_LISTEN_SECRET)",
    )
    p.add_argument(
        "--secret-file",
        metavar="PATH",
        help="read the secret from PATH (- for stdin) (default: none)",
    )
    p.add_argument(
        "--tolerance",
        type=_duration_type("--tolerance"),
        default=timedelta(minutes=5),
        metavar="DURATION",
        help="how far a webhook-timestamp may be from now (default: 5m)",
    )
    p = _command(
        commands,
        "serve",
        cmd_serve,
        "tokenstore.admin.make_app",
        "serve the admin page; needs tokenstore[admin]",
        prints="Says 'admin page on URL' on stderr and serves until Ctrl-C, which exits 0.",
    )
    p.add_argument("--host", default="127.0.0.1", help="the address; loopback unless --public")
    p.add_argument("--port", type=_port, default=8787, help="the port; 0 picks a free one")
    p.add_argument(
        "--public",
        action="store_true",
        help="allow a non-loopback --host, and on loopback requests for any host name, as "
        "a proxy in front passes them (put TLS in front)",
    )
    p = _command(
        commands,
        "demo",
        cmd_demo,
        None,
        "run the whole story on a throwaway file",
        prints="Prints each step, what its receiver got and the delivery log; the global "
        "options are not used. Exits 1 if a step did not go as shown.",
    )
    p.add_argument("--dir", help="where to put the demo's file (default: a new temporary folder)")
