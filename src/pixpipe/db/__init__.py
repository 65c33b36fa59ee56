"""Database access: models, engine, migrations and the repository of queries."""
