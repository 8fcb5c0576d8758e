"""PostgreSQL: the pool, migrations and function files, the query loader, the repository."""
