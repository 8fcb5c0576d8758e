"""HTTP: routes, request bodies, responses, errors as JSON, middleware, OpenAPI and the docs pages."""
