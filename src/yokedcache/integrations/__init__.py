"""Integrations: decorators, dependencies, SQLAlchemy, HTTP. They use only the cache's public surface."""
