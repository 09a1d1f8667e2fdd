"""API tokens and outbound webhooks for applications that embed SQLite."""

__version__ = "0.1.0"
