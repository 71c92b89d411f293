"""pydantic models as events, for the conformance suite (needs ``eventfold[pydantic]``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

__all__ = ["Parcel", "Shipped", "ShippedV1"]


class Parcel(BaseModel):
    """A part of a shipment (a nested model)."""

    model_config = ConfigDict(frozen=True)
    weight: float


class Shipped(BaseModel):
    """An order left the warehouse (schema version 2: ``carrier`` is new)."""

    model_config = ConfigDict(frozen=True)
    __event_type__ = "eventfold.testing.Shipped"
    __event_version__ = 2
    order: str
    carrier: str
    at: datetime
    parcels: tuple[Parcel, ...] = ()


class ShippedV1(BaseModel):
    """The same event as the previous release wrote it."""

    model_config = ConfigDict(frozen=True)
    order: str
    at: datetime
