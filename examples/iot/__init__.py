"""Sensor readings at a high rate: day streams, a SQL read model, closing the books."""
