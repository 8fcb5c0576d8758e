"""Money movements on their way to PostgreSQL: batches, per-user turns."""
