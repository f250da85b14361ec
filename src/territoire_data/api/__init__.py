"""The HTTP layer: app factory, middleware, errors, health, metrics, docs."""
