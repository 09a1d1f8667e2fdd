"""The parts every command is built from: opening the store, the parser, global options."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, NoReturn

import peewee

from .._backend import FELL_BACK
from .._credentials import looks_like_secret
from .._errors import StoreError, StoreReadOnly, TokenstoreError, ValidationError, shortened
from .._models import User
from .._netguard import AddressGuard
from .._postgres_url import hidden_password
from .._store import Store
from .._store import open as open_store
from ._output import Output, held_lines, one_line

DEFAULT_DB = "tokenstore.sqlite3"

# -- opening the store ----------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, Output], int]


class _Rehearsed(Exception):
    """Raised to roll back a rehearsal's transaction once the command has run."""


@contextmanager
def _open(
    args: argparse.Namespace,
    *,
    read: bool = False,
    create: bool = False,
    browse: bool = False,
    rehearse: bool = False,
) -> Iterator[Store]:
    """The store at ``--db``: read-only for commands that only ``read``.

    A command that writes is refused, in one line, on a store it can only
    read; one that may ``browse`` a store it cannot write (the admin page)
    gets it read-only, with the warning.

    Only ``init`` may ``create`` the file: a mistyped path is an error, not a
    new empty store. Opening fires nothing and sends nothing; only the
    commands that send (``dispatch``, ``deliver-due``, ``ping``,
    ``redeliver``) do, and read-only commands never take the write lock.
    A ``rehearse`` (a dry run) sees ``--allow`` and ``--app`` as a real run
    would, inside one transaction that is rolled back: the entries and the
    app's tables are not left in the store.
    """
    if args.db_is_default and not create and not Path(DEFAULT_DB).exists():
        raise StoreError(
            f"no store at ./{DEFAULT_DB}, the default: name yours with --db PATH or "
            "$TOKENSTORE_DB, or create one here with `tokenstore init`"
        )
    for entry in args.allow:  # all good before any is written; a typo is bad input when reading
        AddressGuard.canonical(entry)
    with held_lines() as held, _named_by_environment(args.db_from_environment):
        store = open_store(args.db, dispatch_on_open=False, create=create, read_only=read)
        why = store.db.fell_back
        if why is not None and not (read or create or browse):  # this command would fail
            store.close()
            held[:] = [r for r in held if r.msg != FELL_BACK]  # said in the one error line
            raise StoreReadOnly(f"{why}: it opens read-only, and this command writes to it")
    try:
        if not rehearse:
            # A store this command may only browse, read-only, sends nothing: no entry is needed.
            added = [] if read or store.db.read_only else _allowed(store, args.allow)
            try:
                for name in args.app:
                    register_module(store, name, option=_app_option(args, name))
                yield store
            except TokenstoreError:  # a refused command leaves no entry its --allow added
                for entry in added:
                    store.webhooks.disallow(entry)
                raise
            return
        try:
            with store.atomic():
                for entry in args.allow:
                    store.webhooks.allow(entry)
                for name in args.app:
                    register_module(store, name, rehearsal=True, option=_app_option(args, name))
                yield store
                raise _Rehearsed
        except _Rehearsed:
            pass
    finally:
        store.close()


def _app_option(args: argparse.Namespace, name: str) -> str:
    """Where an --app module came from, as a message names it: the option, or $TOKENSTORE_APP."""
    return "--app" if name in args.given.get("--app", ()) else "$TOKENSTORE_APP"


def _allowed(store: Store, entries: list[str]) -> list[str]:
    """Add ``--allow``'s entries to the file's allowlist; returns those it did not hold."""
    if not entries:
        return []
    held = set(store.webhooks.allowlist())
    for entry in entries:
        now = store.webhooks.allow(entry)  # the list, as it is after this entry
    return [entry for entry in now if entry not in held]


@contextmanager
def _named_by_environment(named: bool) -> Iterator[None]:
    """An error opening a store that $TOKENSTORE_DB named begins ``$TOKENSTORE_DB:``.

    The variable may have been set long ago, in a shell profile: without it
    the message names a path the command line does not hold.
    """
    try:
        yield
    except TokenstoreError as exc:
        if not named:
            raise
        raise type(exc)(f"$TOKENSTORE_DB: {exc}") from None


def register_module(
    store: Store, name: str, *, rehearsal: bool = False, option: str = "--app"
) -> list[type[peewee.Model]]:
    """Register every peewee model a module defines, as the application itself would.

    The command runs in its own process: to name an application's models in
    hooks, or to fire their events with full field types, it needs the classes.
    A through model of a relation is not registered: registering either side
    captures its join table. A ``rehearsal`` registers them inside the dry
    run's transaction, which register() refuses: its rollback takes the
    tables away, and the store is closed with it. Messages say where the
    name came from: ``option``.
    """
    if looks_like_secret(name):  # pasted by mistake: the import's error would quote it too
        raise ValidationError(f"{option} names no module: it looks like a secret (not shown)")
    meant = _module_of_file(name)
    if meant is not None:
        raise ValidationError(f"{option} takes a module's name, not a file's path: {meant}")
    _search_current_folder()
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ValidationError(f"{option} {name!r} cannot be imported: {exc}") from None
    except (Exception, SystemExit) as exc:  # the module's own code failed as it ran
        raise ValidationError(
            f"{option} {name!r} failed as it was imported: {type(exc).__name__}: {exc}"
        ) from None
    if User._meta.database is not store.db:  # a module-level tokenstore.open() rebound them
        raise ValidationError(
            f"{option} {name!r} opened a store as it was imported, and every model now works "
            "through that one, not the store this command opened: name a module that only "
            "defines the models, and open the store where the application starts"
        )
    models = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, peewee.Model)
        and obj.__module__ == module.__name__
        and not _is_through_model(obj)
    ]
    register = store._register if rehearsal else store.register
    for model in models:
        register(model)
    return models


def _module_of_file(name: str) -> str | None:
    """For an --app that names a file or a folder (``app/models.py``): the module it holds.

    Its name counts the packages (folders with ``__init__.py``) around it, and
    then the folders between the current one and theirs; a file outside the
    current folder is imported from where its packages start.
    """
    if not name.endswith(".py") and "/" not in name and os.sep not in name:
        return None
    file = Path(name.removesuffix(".py")).resolve()
    parts = [file.name]
    folder = file.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    here = Path.cwd().resolve()
    if folder.is_relative_to(here):
        parts[:0] = folder.relative_to(here).parts
        return f"did you mean --app {'.'.join(parts)}? (run here)"
    return f"did you mean --app {'.'.join(parts)}? (run in {folder})"


def _search_current_folder() -> None:
    """Let --app name a module in the current folder, as ``python -m tokenstore`` does.

    The installed script starts with its own folder first on sys.path, so
    ``tokenstore --app myapp`` beside myapp.py found nothing while the README calls
    the two the same command. The folder goes last, so a file there cannot stand in
    for a module imported later (requests, at the first webhook sent); Python's -P
    (PYTHONSAFEPATH) keeps it out.
    """
    here = os.getcwd()
    if not sys.flags.safe_path and "" not in sys.path and here not in sys.path:
        sys.path.append(here)


def _is_through_model(model: type[peewee.Model]) -> bool:
    """Whether a model is the join table of a ManyToManyField of a model it refers to."""
    return any(
        m2m.through_model is model
        for target in list(model._meta.model_refs)
        for m2m in target._meta.manytomany.values()
    )


def _warn_waiting(waiting: dict[str, int]) -> None:
    """Say on stderr which tables' events wait for a process with their models."""
    if waiting:
        tables = ", ".join(f"{table}: {count}" for table, count in waiting.items())
        print(
            f"tokenstore: {sum(waiting.values())} events wait for tables this process has no "
            f"model for ({tables}); pass --app MODULE (or set TOKENSTORE_APP) naming the "
            "module that defines them",
            file=sys.stderr,
        )


# -- the parser's building blocks -----------------------------------------------------------


class _StoreOnce(argparse._StoreAction):
    """An option that takes one value refuses a second: argparse let the last one win unsaid,
    so ``tokens authenticate --scope admin --scope read`` checked ``read`` alone."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if self.option_strings:
            given: set[str] = namespace.__dict__.setdefault("_given_once", set())
            if self.dest in given:
                parser.error(f"argument {option_string}: given twice; it takes one value")
            given.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error of the command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def error(self, message: str) -> NoReturn:
        """A usage error in one line, exit 2, like every other error of the command.

        argparse quotes what it could not place: a secret given there (a token
        where none belongs, a URL without its ``--db``) is not repeated.
        """
        said = one_line(shortened(hide_given(message)))
        self.exit(2, f"{self.prog}: error: {said} (see {self.prog} --help)\n")


#: The arguments of the command line being parsed, which a usage error may quote.
GIVEN: ContextVar[Sequence[str]] = ContextVar("GIVEN", default=())


def hide_given(message: str) -> str:
    """An error message with the secrets of the command line left out: a token or signing
    secret given where a name, a path or a time belongs, a URL's password.

    Messages quote a caller's value to say what was wrong with it; a secret pasted
    by mistake must not be echoed to the terminal or a CI log, whichever layer spoke.
    """
    for given in GIVEN.get():  # whole, as a password holding a blank is not one word
        message = message.replace(given, hidden_password(given))
    return re.sub(r"\S+", _not_secret, message)


def _not_secret(word: re.Match[str]) -> str:
    """A word of a usage error as shown: a secret left out, a URL without its password."""
    if looks_like_secret(word[0]):
        return "(a secret, not shown)"
    return hidden_password(word[0])


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        """The option's help, with its default unless the help says it already."""
        text = action.help or ""
        positional_required = not action.option_strings and action.nargs not in ("?", "*")
        if (
            "(default" in text
            or action.default is argparse.SUPPRESS
            or positional_required
            or action.required
        ):
            return text
        if isinstance(action, argparse._StoreFalseAction):
            return f"{text} (default: False)"  # the flag is off unless given, whatever its dest
        return f"{text} (default: %(default)s)"


#: (flags, dest, argparse keywords, help) of the options every command takes.
_GLOBAL_OPTIONS: tuple[tuple[str, str, dict[str, Any], str], ...] = (
    (
        "--db",
        "db",
        {"metavar": "PATH"},
        f"the store file or postgresql:// URL (default: $TOKENSTORE_DB, else ./{DEFAULT_DB})",
    ),
    ("--json", "json", {"action": "store_true"}, "print JSON (default: text for people)"),
    (
        "--allow",
        "allow",
        {"action": "append", "metavar": "HOST_OR_CIDR"},
        "let webhooks reach this host or network, which the address guard refuses by "
        "default, e.g. 127.0.0.1/32; a command that writes adds it to the file's allowlist, "
        "which every process applies (repeatable; added to $TOKENSTORE_WEBHOOK_ALLOW, "
        "comma-separated) (default: none)",
    ),
    (
        "--app",
        "app",
        {"action": "append", "metavar": "MODULE"},
        "import MODULE and register the peewee models it defines (repeatable; added to "
        "$TOKENSTORE_APP, comma-separated) (default: none)",
    ),
)


#: Where global options may stand, in the order their values are merged: before
#: everything, after a group's name (``tokens --json list``), after the command.
_PLACES = ("", "group_", "late_")


def _add_global_options(parser: argparse.ArgumentParser, place: str) -> None:
    """The global options; a group's and a command's copies land apart and are merged after.

    Each place keeps its own names because argparse parses a subcommand into a
    namespace of its own and copies it over the outer one: one shared name
    would let ``--allow`` after the command drop the one before it.
    """
    if not place:
        for flag, dest, keywords, help_text in _GLOBAL_OPTIONS:
            parser.add_argument(flag, dest=dest, help=help_text, **keywords)
        return
    group = parser.add_argument_group("global options (also accepted before the command)")
    for flag, dest, keywords, help_text in _GLOBAL_OPTIONS:
        group.add_argument(
            flag, dest=f"{place}{dest}", default=argparse.SUPPRESS, help=help_text, **keywords
        )


def _env_list(name: str) -> list[str]:
    """A comma-separated environment variable as a list (empty entries dropped)."""
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _settle_global_options(args: argparse.Namespace) -> None:
    """One value per global option: the latest place wins (after the command, after its
    group, before both), then $VARIABLES; ``--allow`` and ``--app`` add up from all."""
    dbs = [getattr(args, f"{place}db", None) for place in reversed(_PLACES)]
    if "" in dbs:  # `--db "$DB"` with $DB unset: no reason to use ./tokenstore.sqlite3
        args.command_parser.error("argument --db: it is empty: name the store file or URL")
    args.db = next((db for db in dbs if db), None)
    #: The store an error is about came from $TOKENSTORE_DB: the error says so.
    args.db_from_environment = not args.db and bool(os.environ.get("TOKENSTORE_DB"))
    args.db = args.db or os.environ.get("TOKENSTORE_DB")
    args.db_is_default = not args.db  # a missing default file is said to be the default
    args.db = args.db or DEFAULT_DB
    args.json = any(getattr(args, f"{place}json", False) for place in _PLACES)
    #: The options given on the command line, not by $VARIABLES, with what each gave.
    args.given = {}
    for dest, variable in (("allow", "TOKENSTORE_WEBHOOK_ALLOW"), ("app", "TOKENSTORE_APP")):
        given = [item for place in _PLACES for item in getattr(args, f"{place}{dest}", None) or []]
        if not all(item.strip() for item in given):  # `--allow "$HOST"` with $HOST unset
            args.command_parser.error(f"argument --{dest}: it is empty: name the {_NAMES[dest]}")
        if given:
            args.given[f"--{dest}"] = given
        setattr(args, dest, _env_list(variable) + given)


#: What an --allow or --app entry names, for the refusal of an empty one.
_NAMES = {"allow": "host, address or network to allow", "app": "module to import"}


Commands = Any  # argparse's private _SubParsersAction


def _group(commands: Commands, name: str, help_text: str, examples: str) -> Commands:
    """A command group (``tokens``, ``webhooks`` ...) with its examples under its help."""
    parser = commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"examples:\n{examples}",
        formatter_class=_Formatter,
    )
    _add_global_options(parser, "group_")
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def _command(
    group: Commands,
    name: str,
    handler: Handler,
    call: str | None,
    help_text: str,
    aliases: Sequence[str] = (),
    prints: str | None = None,
) -> argparse.ArgumentParser:
    """A command that runs ``call``; ``aliases`` are the names earlier versions used.

    ``prints`` says what the command prints, and how it exits, where the
    help's first line and the usual record of what it touched do not.
    """
    description = help_text if call is None else f"{help_text} ({call})"
    if prints is not None:
        description = f"{description}\n\n{textwrap.fill(prints, 78)}"
    sub: argparse.ArgumentParser = group.add_parser(
        name,
        aliases=list(aliases),
        help=help_text,
        description=description,
        formatter_class=_Formatter,
    )
    sub.set_defaults(handler=handler, call=call, command_parser=sub)
    _add_global_options(sub, "late_")
    return sub
