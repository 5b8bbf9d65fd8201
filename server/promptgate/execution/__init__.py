"""Execution: resolve -> render -> call the provider -> normalise -> record."""
