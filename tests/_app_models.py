"""An application's models, imported by the CLI tests with ``--app _app_models``."""

import peewee

from tokenstore import ABIDModel


class Bookmark(ABIDModel):
    abid_prefix = "bkm_"
    abid_uri_src = "url"
    url = peewee.TextField()
