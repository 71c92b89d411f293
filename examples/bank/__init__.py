"""The bank account of the event sourcing article, in both eventfold styles."""
