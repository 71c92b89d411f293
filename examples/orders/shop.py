"""An order flow over three models, driven by a process manager.

Streams: ``order-<id>`` (the order, which also records the flow's decisions),
``inventory-<sku>`` (stock of one SKU) and ``payment-<customer>`` (a
customer's prepaid wallet). The flow::

    OrderPlaced --reserve each line--> InventoryReserved --charge the wallet-->
    PaymentCaptured --> OrderShipped --stock leaves the warehouse

    out of stock / payment declined / customer cancels before shipping
        -> OrderCancelled --release reservations, refund payment--> CancellationCompleted

The order stream is the arbiter: a cancellation is accepted only while the
order is not shipped, and shipping is decided on the order *before* any stock
leaves, so a cancellation and a shipment can never both win. Compensations
(``Release``, ``Refund``) do nothing when there is nothing to undo, so the
cancellation reaction can simply undo every step without knowing how far the
flow got. Amounts are integer cents.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, assert_never

import msgspec

from eventfold import CommandHandler, Decider, Event, RecordedEvent
from eventfold.processes import Dispatch, ProcessManager
from eventfold.projections import ErrorPolicy


class ShopError(Exception):
    """A command broke a rule of the shop; nothing was written."""


# == the order =============================================================================


class OrderLine(msgspec.Struct, frozen=True):
    """``quantity`` units of ``sku`` at ``unit_price`` cents each."""

    sku: str
    quantity: int
    unit_price: int


class OrderPlaced(Event, frozen=True):
    """``customer`` ordered ``lines``."""

    __event_type__ = "orders.OrderPlaced"
    customer: str
    lines: tuple[OrderLine, ...]


class InventoryReserved(Event, frozen=True):
    """Every line's stock is set aside for this order."""

    __event_type__ = "orders.InventoryReserved"


class PaymentCaptured(Event, frozen=True):
    """The customer paid ``amount`` cents for this order."""

    __event_type__ = "orders.PaymentCaptured"
    amount: int


class OrderShipped(Event, frozen=True):
    """The order is on its way; it can no longer be cancelled."""

    __event_type__ = "orders.OrderShipped"


class OrderCancelled(Event, frozen=True):
    """The order will not be fulfilled; what was done must be undone."""

    __event_type__ = "orders.OrderCancelled"
    reason: str


class CancellationCompleted(Event, frozen=True):
    """Stock was released and payment refunded for a cancelled order."""

    __event_type__ = "orders.CancellationCompleted"


OrderEvent = (
    OrderPlaced
    | InventoryReserved
    | PaymentCaptured
    | OrderShipped
    | OrderCancelled
    | CancellationCompleted
)


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    """A customer's order (one line per SKU)."""

    customer: str
    lines: tuple[OrderLine, ...]


@dataclass(frozen=True, slots=True)
class RecordReservation:
    """The flow reserved every line."""


@dataclass(frozen=True, slots=True)
class RecordPayment:
    """The flow charged the customer the order's total."""


@dataclass(frozen=True, slots=True)
class ShipOrder:
    """The flow decides to ship (stock leaves after this is recorded)."""


@dataclass(frozen=True, slots=True)
class CancelOrder:
    """Cancel the order (the customer, or the flow after a rejected step)."""

    reason: str


@dataclass(frozen=True, slots=True)
class CompleteCancellation:
    """The flow released the stock and refunded the payment."""


OrderCommand = (
    PlaceOrder | RecordReservation | RecordPayment | ShipOrder | CancelOrder | CompleteCancellation
)


class InvalidOrder(ShopError):
    """The order itself is malformed."""


class OrderNotPlaced(ShopError):
    """A command for an order that does not exist."""

    def __init__(self) -> None:
        super().__init__("no such order")


class AlreadyShipped(ShopError):
    """A shipped order cannot be cancelled."""

    def __init__(self) -> None:
        super().__init__("the order has shipped and can no longer be cancelled")


OrderStatus = Literal["new", "placed", "reserved", "paid", "shipped", "cancelling", "cancelled"]
_CANCELLABLE = ("placed", "reserved", "paid")


@dataclass(frozen=True, slots=True)
class OrderState:
    """An order's progress through the flow."""

    status: OrderStatus = "new"
    customer: str = ""
    lines: tuple[OrderLine, ...] = ()
    reason: str | None = None

    @property
    def total(self) -> int:
        """What the order costs, in cents."""
        return sum(line.quantity * line.unit_price for line in self.lines)


def _check_lines(lines: tuple[OrderLine, ...]) -> None:
    if not lines:
        raise InvalidOrder("an order needs at least one line")
    skus = [line.sku for line in lines]
    if len(set(skus)) != len(skus):
        # One reservation per order and SKU: a repeated SKU would be reserved once.
        raise InvalidOrder(f"each SKU may appear once per order: {skus}")
    for line in lines:
        if line.quantity <= 0 or line.unit_price < 0:
            raise InvalidOrder(f"bad quantity or price in {line}")


def decide_order(command: OrderCommand, state: OrderState) -> list[OrderEvent]:
    """The order's rules. Flow steps that no longer apply return no events.

    (The process manager sends the rest of a reaction's commands even after
    one was rejected and the order cancelled; those must then do nothing.)
    """
    match command:
        case PlaceOrder(customer=customer, lines=lines):
            if state.status != "new":
                raise InvalidOrder("this order was already placed")
            _check_lines(lines)
            return [OrderPlaced(customer=customer, lines=lines)]
        case _ if state.status == "new":
            raise OrderNotPlaced
        case RecordReservation():
            return [InventoryReserved()] if state.status == "placed" else []
        case RecordPayment():
            return [PaymentCaptured(amount=state.total)] if state.status == "reserved" else []
        case ShipOrder():
            return [OrderShipped()] if state.status == "paid" else []
        case CancelOrder(reason=reason):
            if state.status == "shipped":
                raise AlreadyShipped
            return [OrderCancelled(reason=reason)] if state.status in _CANCELLABLE else []
        case CompleteCancellation():
            return [CancellationCompleted()] if state.status == "cancelling" else []
        case _:
            assert_never(command)


def evolve_order(state: OrderState, event: OrderEvent) -> OrderState:
    """Apply one order event."""
    match event:
        case OrderPlaced(customer=customer, lines=lines):
            return OrderState("placed", customer, lines)
        case InventoryReserved():
            return replace(state, status="reserved")
        case PaymentCaptured():
            return replace(state, status="paid")
        case OrderShipped():
            return replace(state, status="shipped")
        case OrderCancelled(reason=reason):
            return replace(state, status="cancelling", reason=reason)
        case CancellationCompleted():
            return replace(state, status="cancelled")
        case _:
            assert_never(event)


order = Decider(decide_order, evolve_order, OrderState)

# == inventory (one stream per SKU) =========================================================


class StockAdded(Event, frozen=True):
    """``quantity`` units arrived at the warehouse."""

    __event_type__ = "orders.StockAdded"
    quantity: int


class StockReserved(Event, frozen=True):
    """``quantity`` units are set aside for ``order_id``."""

    __event_type__ = "orders.StockReserved"
    order_id: str
    quantity: int


class ReservationReleased(Event, frozen=True):
    """The units set aside for ``order_id`` are available again."""

    __event_type__ = "orders.ReservationReleased"
    order_id: str
    quantity: int


class StockShipped(Event, frozen=True):
    """The units reserved for ``order_id`` left the warehouse."""

    __event_type__ = "orders.StockShipped"
    order_id: str
    quantity: int


InventoryEvent = StockAdded | StockReserved | ReservationReleased | StockShipped


@dataclass(frozen=True, slots=True)
class AddStock:
    """Receive ``quantity`` units."""

    quantity: int


@dataclass(frozen=True, slots=True)
class Reserve:
    """Set ``quantity`` units aside for ``order_id`` (once per order)."""

    order_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Release:
    """Compensation: give back what ``order_id`` reserved, if anything."""

    order_id: str


@dataclass(frozen=True, slots=True)
class Ship:
    """Send out what ``order_id`` reserved."""

    order_id: str


InventoryCommand = AddStock | Reserve | Release | Ship


class OutOfStock(ShopError):
    """Fewer units are available than an order needs."""

    def __init__(self, available: int, wanted: int) -> None:
        self.available = available
        self.wanted = wanted
        super().__init__(f"only {available} available, {wanted} wanted")


class NothingReserved(ShopError):
    """Shipping an order that holds no reservation: a bug in the flow."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id} holds no reservation")


@dataclass(frozen=True, slots=True)
class StockState:
    """One SKU's stock. ``received == available + sum(reserved) + shipped`` always."""

    received: int = 0
    available: int = 0
    reserved: dict[str, int] = field(default_factory=dict)  # order id -> units
    shipped: int = 0

    def reservation(self, order_id: str) -> int:
        """Units held for ``order_id`` (0: none)."""
        return self.reserved.get(order_id, 0)


def decide_stock(command: InventoryCommand, state: StockState) -> list[InventoryEvent]:
    """The warehouse's rules."""
    match command:
        case AddStock(quantity=quantity):
            if quantity <= 0:
                raise ShopError(f"cannot receive {quantity} units")
            return [StockAdded(quantity=quantity)]
        case Reserve(order_id=order_id, quantity=quantity):
            if state.reservation(order_id):
                return []  # reserved already
            if quantity > state.available:
                raise OutOfStock(state.available, quantity)
            return [StockReserved(order_id=order_id, quantity=quantity)]
        case Release(order_id=order_id):
            held = state.reservation(order_id)
            return [ReservationReleased(order_id=order_id, quantity=held)] if held else []
        case Ship(order_id=order_id):
            held = state.reservation(order_id)
            if not held:
                raise NothingReserved(order_id)
            return [StockShipped(order_id=order_id, quantity=held)]
        case _:
            assert_never(command)


def evolve_stock(state: StockState, event: InventoryEvent) -> StockState:
    """Apply one inventory event (the reservations dict is copied, never shared)."""
    reserved = dict(state.reserved)
    match event:
        case StockAdded(quantity=quantity):
            return replace(
                state, received=state.received + quantity, available=state.available + quantity
            )
        case StockReserved(order_id=order_id, quantity=quantity):
            reserved[order_id] = quantity
            return replace(state, available=state.available - quantity, reserved=reserved)
        case ReservationReleased(order_id=order_id, quantity=quantity):
            del reserved[order_id]
            return replace(state, available=state.available + quantity, reserved=reserved)
        case StockShipped(order_id=order_id, quantity=quantity):
            del reserved[order_id]
            return replace(state, shipped=state.shipped + quantity, reserved=reserved)
        case _:
            assert_never(event)


inventory = Decider(decide_stock, evolve_stock, StockState)

# == payment (a prepaid wallet per customer) ================================================


class FundsAdded(Event, frozen=True):
    """The customer topped their wallet up by ``amount`` cents."""

    __event_type__ = "orders.FundsAdded"
    amount: int


class PaymentCharged(Event, frozen=True):
    """``amount`` cents were taken for ``order_id``."""

    __event_type__ = "orders.PaymentCharged"
    order_id: str
    amount: int


class PaymentRefunded(Event, frozen=True):
    """The charge for ``order_id`` was paid back."""

    __event_type__ = "orders.PaymentRefunded"
    order_id: str
    amount: int


PaymentEvent = FundsAdded | PaymentCharged | PaymentRefunded


@dataclass(frozen=True, slots=True)
class AddFunds:
    """Top the wallet up."""

    amount: int


@dataclass(frozen=True, slots=True)
class Charge:
    """Take ``amount`` cents for ``order_id`` (once per order)."""

    order_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class Refund:
    """Compensation: pay back the charge for ``order_id``, if there was one."""

    order_id: str


PaymentCommand = AddFunds | Charge | Refund


class PaymentDeclined(ShopError):
    """The wallet does not cover the charge."""

    def __init__(self, balance: int, amount: int) -> None:
        self.balance = balance
        self.amount = amount
        super().__init__(f"balance {balance} cents does not cover {amount}")


@dataclass(frozen=True, slots=True)
class WalletState:
    """A wallet's balance and the charges not yet refunded (order id -> cents)."""

    balance: int = 0
    charges: dict[str, int] = field(default_factory=dict)
    refunded: tuple[str, ...] = ()

    def outstanding(self) -> int:
        """Cents charged and not refunded: the shop's takings from this customer."""
        return sum(v for k, v in self.charges.items() if k not in self.refunded)


def decide_payment(command: PaymentCommand, state: WalletState) -> list[PaymentEvent]:
    """The wallet's rules."""
    charges = state.charges
    match command:
        case AddFunds(amount=amount):
            if amount <= 0:
                raise ShopError(f"cannot add {amount} cents")
            return [FundsAdded(amount=amount)]
        case Charge(order_id=order_id, amount=amount):
            if order_id in charges:
                return []  # charged already
            if amount > state.balance:
                raise PaymentDeclined(state.balance, amount)
            return [PaymentCharged(order_id=order_id, amount=amount)]
        case Refund(order_id=order_id):
            if order_id not in charges or order_id in state.refunded:
                return []
            return [PaymentRefunded(order_id=order_id, amount=charges[order_id])]
        case _:
            assert_never(command)


def evolve_payment(state: WalletState, event: PaymentEvent) -> WalletState:
    """Apply one wallet event."""
    match event:
        case FundsAdded(amount=amount):
            return replace(state, balance=state.balance + amount)
        case PaymentCharged(order_id=order_id, amount=amount):
            charges = {**state.charges, order_id: amount}
            return replace(state, balance=state.balance - amount, charges=charges)
        case PaymentRefunded(order_id=order_id, amount=amount):
            return replace(
                state, balance=state.balance + amount, refunded=(*state.refunded, order_id)
            )
        case _:
            assert_never(event)


payment = Decider(decide_payment, evolve_payment, WalletState)

# == the flow ===============================================================================


def order_stream(order_id: str) -> str:
    """The stream of order ``order_id``."""
    return f"order-{order_id}"


def stock_stream(sku: str) -> str:
    """The stream of the stock of ``sku``."""
    return f"inventory-{sku}"


def wallet_stream(customer: str) -> str:
    """The stream of ``customer``'s wallet."""
    return f"payment-{customer}"


@dataclass(frozen=True)
class Shop:
    """The three command handlers the flow sends commands through."""

    orders: CommandHandler[OrderState, OrderCommand]
    stock: CommandHandler[StockState, InventoryCommand]
    payments: CommandHandler[WalletState, PaymentCommand]


ORDER_FLOW_TYPES = [
    OrderPlaced.__event_type__,
    InventoryReserved.__event_type__,
    PaymentCaptured.__event_type__,
    OrderShipped.__event_type__,
    OrderCancelled.__event_type__,
]


def order_flow(
    shop: Shop, *, name: str = "order-flow", on_error: ErrorPolicy | None = None
) -> ProcessManager:
    """The process manager: one reaction per order event, guarded by the order's state.

    The guard matters on redelivery: a rejected command leaves no event behind
    for an idempotency key to find, so a redelivered ``OrderPlaced`` of a
    cancelled order must not try to reserve stock again.
    """

    def react(event: RecordedEvent) -> list[Dispatch]:
        state = shop.orders.load(event.stream).state
        order_id = event.stream.removeprefix("order-")
        lines = state.lines
        match event.data:
            case OrderPlaced() if state.status == "placed":
                return [
                    *(
                        Dispatch(shop.stock, stock_stream(x.sku), Reserve(order_id, x.quantity))
                        for x in lines
                    ),
                    Dispatch(shop.orders, event.stream, RecordReservation()),
                ]
            case InventoryReserved() if state.status == "reserved":
                return [
                    Dispatch(
                        shop.payments, wallet_stream(state.customer), Charge(order_id, state.total)
                    ),
                    Dispatch(shop.orders, event.stream, RecordPayment()),
                ]
            case PaymentCaptured() if state.status == "paid":
                return [Dispatch(shop.orders, event.stream, ShipOrder())]
            case OrderShipped():
                return [Dispatch(shop.stock, stock_stream(x.sku), Ship(order_id)) for x in lines]
            case OrderCancelled() if state.status == "cancelling":
                # Undo every step; each compensation is a no-op if its step never happened.
                return [
                    *(Dispatch(shop.stock, stock_stream(x.sku), Release(order_id)) for x in lines),
                    Dispatch(shop.payments, wallet_stream(state.customer), Refund(order_id)),
                    Dispatch(shop.orders, event.stream, CompleteCancellation()),
                ]
            case _:
                return []

    def on_rejected(event: RecordedEvent, dispatch: Dispatch, error: Exception) -> list[Dispatch]:
        # Called for any non-eventfold exception: only out-of-stock and a declined
        # payment are business outcomes; the rest goes to the error policy.
        if isinstance(error, OutOfStock | PaymentDeclined):
            reason = f"{dispatch.stream}: {error}"
            return [Dispatch(shop.orders, event.stream, CancelOrder(reason))]
        raise error

    return ProcessManager(
        name,
        react,
        types=ORDER_FLOW_TYPES,
        stream_prefix="order-",
        on_rejected=on_rejected,
        on_error=on_error,
    )
