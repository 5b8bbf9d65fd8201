"""Persistence: SQLModel tables, the async engine, and schema set-up."""
