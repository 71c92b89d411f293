"""Runnable examples of eventfold; each sub-package has its own tests."""
