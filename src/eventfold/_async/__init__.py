"""Asyncio implementations: the single source from which ``eventfold._sync`` is generated."""
