"""End-to-end scenarios: several components, real databases, one story each."""
