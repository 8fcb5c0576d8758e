"""HTTP routes, one module per resource. Handlers hold no SQL: they call exchange.store.repository."""
