"""A money transfer between two bank accounts, run as a saga (a process manager)."""
