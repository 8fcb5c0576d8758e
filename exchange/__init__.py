"""exchange: a self-hostable crypto exchange backend on a double-entry ledger."""

__version__ = "0.1.0"
