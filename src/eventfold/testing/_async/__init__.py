"""Async source of the conformance suite."""
