"""The order flow: every path, a customer cancelling before every step, a crash at every step.

Stock and money are checked to be conserved in every outcome: per SKU,
``received == available + reserved + shipped``; per wallet, funds added ==
balance + charges not refunded; and the shop keeps exactly the totals of the
orders it shipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest

from eventfold import (
    CommandHandler,
    CommandResult,
    EventStore,
    MemoryEventStore,
    SqliteEventStore,
    StoreUnavailable,
)
from eventfold.projections import ProjectionRunner, ProjectionStopped
from examples.orders.shop import (
    AddFunds,
    AddStock,
    AlreadyShipped,
    CancelOrder,
    Charge,
    InvalidOrder,
    InventoryReserved,
    NothingReserved,
    OrderLine,
    OrderNotPlaced,
    OrderShipped,
    OrderState,
    OutOfStock,
    PaymentCaptured,
    PaymentDeclined,
    PlaceOrder,
    RecordPayment,
    Refund,
    Release,
    Reserve,
    Ship,
    Shop,
    decide_order,
    decide_payment,
    decide_stock,
    inventory,
    order,
    order_flow,
    order_stream,
    payment,
    stock_stream,
    wallet_stream,
)

S = TypeVar("S")
C = TypeVar("C")

ORDER = order_stream("o1")
MUG, TEE = "mug", "tee"
STOCK = {MUG: 10, TEE: 5}
WALLETS = {"ann": 10_000, "bob": 5_000}  # Bob cannot afford the order below
PRICES = {MUG: 1_200, TEE: 2_000}
OWNER = "order-worker"  # a restarted worker keeps its name, so it takes its lease back

# -- failure injection -------------------------------------------------------------------


@dataclass
class Fault:
    """Run ``effect`` once around the ``at``-th command the flow sends (1-based).

    ``effect`` raises to simulate a crash (``after``: the command committed but
    its reply was lost), or does something else at that moment, such as a
    customer cancelling the order.
    """

    at: int | None = None
    when: Literal["before", "after"] = "before"
    effect: Callable[[], None] | None = None
    calls: list[str] = field(default_factory=list)
    fired: bool = False

    def around(self, label: str, run: Callable[[], CommandResult[S]]) -> CommandResult[S]:
        """Run one command, with the effect before or after it if this is the step."""
        self.calls.append(label)
        due = not self.fired and len(self.calls) == self.at
        if due and self.when == "before":
            self._fire()
        try:
            result = run()
        except Exception:
            if due and self.when == "after":
                self._fire()
            raise
        if due and self.when == "after":
            self._fire()
        return result

    def _fire(self) -> None:
        self.fired = True
        if self.effect is None:
            raise StoreUnavailable("database restarting")
        self.effect()


class FaultyHandler(CommandHandler[S, C]):
    """A command handler whose commands pass through a :class:`Fault`."""

    fault: Fault | None = None

    def handle(
        self,
        stream: str,
        command: C,
        *,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CommandResult[S]:
        """As CommandHandler.handle, logged in (and maybe disturbed by) ``self.fault``."""

        def run() -> CommandResult[S]:
            return super(FaultyHandler, self).handle(
                stream, command, idempotency_key=idempotency_key, metadata=metadata
            )

        if self.fault is None:
            return run()
        return self.fault.around(f"{type(command).__name__} {stream}", run)


@dataclass
class App:
    """The shop's handlers, the flow and its runner, as one process wires them."""

    store: EventStore
    fault: Fault | None = None

    def __post_init__(self) -> None:
        self.orders = FaultyHandler(self.store, order)
        self.stock = FaultyHandler(self.store, inventory)
        self.payments = FaultyHandler(self.store, payment)
        self.orders.fault = self.stock.fault = self.payments.fault = self.fault
        flow = order_flow(Shop(self.orders, self.stock, self.payments))
        self.runner = ProjectionRunner(self.store, flow.projection, owner=OWNER)


@pytest.fixture(params=["memory", "sqlite"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Open the store: the same memory store, or a new connection to one SQLite file."""
    opened: list[Any] = []
    shared = MemoryEventStore() if request.param == "memory" else None

    def open_one() -> Any:
        store = shared or SqliteEventStore(tmp_path / "shop.db", durability="off")
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


def stock_up(store: EventStore) -> None:
    """Fill the warehouse (STOCK) and the wallets (WALLETS)."""
    stock, payments = CommandHandler(store, inventory), CommandHandler(store, payment)
    for sku, quantity in STOCK.items():
        stock.handle(stock_stream(sku), AddStock(quantity))
    for customer, amount in WALLETS.items():
        payments.handle(wallet_stream(customer), AddFunds(amount))


def lines(mugs: int, tees: int) -> tuple[OrderLine, ...]:
    """An order for ``mugs`` mugs and ``tees`` T-shirts."""
    return (OrderLine(MUG, mugs, PRICES[MUG]), OrderLine(TEE, tees, PRICES[TEE]))


def assert_conserved(store: EventStore, shipped_orders: list[str]) -> None:
    """Stock and money are conserved, and the shop kept what it shipped, nothing else."""
    stock, payments = CommandHandler(store, inventory), CommandHandler(store, payment)
    orders = CommandHandler(store, order)
    shipped: dict[str, int] = {}
    for order_id in shipped_orders:
        for line in orders.load(order_stream(order_id)).state.lines:
            shipped[line.sku] = shipped.get(line.sku, 0) + line.quantity
    for sku, received in STOCK.items():
        state = stock.load(stock_stream(sku)).state
        assert state.received == received
        assert state.available + sum(state.reserved.values()) + state.shipped == received
        assert state.reserved == {}, f"{sku}: a reservation was left behind"
        assert state.shipped == shipped.get(sku, 0)
    takings = 0
    for customer, funded in WALLETS.items():
        wallet = payments.load(wallet_stream(customer)).state
        assert wallet.balance + wallet.outstanding() == funded
        takings += wallet.outstanding()
    assert takings == sum(orders.load(order_stream(o)).state.total for o in shipped_orders)
    keys = [
        e.metadata["idempotency_key"] for e in store.read_all() if "idempotency_key" in e.metadata
    ]
    assert len(keys) == len(set(keys)), "an event was written twice by one command"


# -- the models alone -----------------------------------------------------------------------


def test_rules_are_plain_functions() -> None:
    with pytest.raises(InvalidOrder):
        decide_order(PlaceOrder("ann", ()), OrderState())
    with pytest.raises(InvalidOrder):
        decide_order(PlaceOrder("ann", (OrderLine(MUG, 1, 1), OrderLine(MUG, 2, 1))), OrderState())
    with pytest.raises(OrderNotPlaced):
        decide_order(CancelOrder("why"), OrderState())
    placed = order.fold(decide_order(PlaceOrder("ann", lines(1, 1)), OrderState()))
    assert placed.total == PRICES[MUG] + PRICES[TEE]
    shipped = order.fold(
        [InventoryReserved(), PaymentCaptured(amount=placed.total), OrderShipped()], placed
    )
    with pytest.raises(AlreadyShipped):
        decide_order(CancelOrder("too late"), shipped)
    assert decide_order(RecordPayment(), shipped) == []

    stock = inventory.fold(decide_stock(AddStock(3), inventory.initial_state()))
    with pytest.raises(OutOfStock):
        decide_stock(Reserve("o9", 4), stock)
    held = inventory.fold(decide_stock(Reserve("o9", 2), stock), stock)
    assert (held.available, held.reservation("o9")) == (1, 2)
    assert decide_stock(Reserve("o9", 2), held) == []  # once per order
    assert decide_stock(Release("o8"), held) == []  # nothing to undo: no-op
    with pytest.raises(NothingReserved):
        decide_stock(Ship("o8"), held)

    wallet = payment.fold(decide_payment(AddFunds(100), payment.initial_state()))
    with pytest.raises(PaymentDeclined):
        decide_payment(Charge("o9", 101), wallet)
    assert decide_payment(Refund("o9"), wallet) == []


# -- each path, straight through --------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """An order, whether the customer cancels at once, and what must follow."""

    name: str
    customer: str
    tees: int
    cancel_at_once: bool
    calls: list[str]
    status: str
    history: dict[str, list[str]]


def stream_calls(*pairs: tuple[str, str]) -> list[str]:
    """The log lines of the commands the flow sends, as the Fault records them."""
    return [f"{command} {stream}" for command, stream in pairs]


INV_MUG, INV_TEE, ANN, BOB = stock_stream(MUG), stock_stream(TEE), "payment-ann", "payment-bob"
HAPPY = Scenario(
    "happy",
    "ann",
    3,
    False,
    stream_calls(
        ("Reserve", INV_MUG),
        ("Reserve", INV_TEE),
        ("RecordReservation", ORDER),
        ("Charge", ANN),
        ("RecordPayment", ORDER),
        ("ShipOrder", ORDER),
        ("Ship", INV_MUG),
        ("Ship", INV_TEE),
    ),
    "shipped",
    {
        ORDER: ["OrderPlaced", "InventoryReserved", "PaymentCaptured", "OrderShipped"],
        INV_MUG: ["StockAdded", "StockReserved", "StockShipped"],
        INV_TEE: ["StockAdded", "StockReserved", "StockShipped"],
        ANN: ["FundsAdded", "PaymentCharged"],
    },
)
UNDONE = ["OrderCancelled", "CancellationCompleted"]
OUT_OF_STOCK = Scenario(
    "out-of-stock",
    "ann",
    6,  # only 5 tees
    False,
    stream_calls(
        ("Reserve", INV_MUG),
        ("Reserve", INV_TEE),  # rejected
        ("CancelOrder", ORDER),
        ("RecordReservation", ORDER),  # a no-op: cancelled meanwhile
        ("Release", INV_MUG),
        ("Release", INV_TEE),  # a no-op: never reserved
        ("Refund", ANN),  # a no-op: never charged
        ("CompleteCancellation", ORDER),
    ),
    "cancelled",
    {
        ORDER: ["OrderPlaced", *UNDONE],
        INV_MUG: ["StockAdded", "StockReserved", "ReservationReleased"],
        INV_TEE: ["StockAdded"],
        ANN: ["FundsAdded"],
    },
)
DECLINED = Scenario(
    "payment-declined",
    "bob",
    3,
    False,
    stream_calls(
        ("Reserve", INV_MUG),
        ("Reserve", INV_TEE),
        ("RecordReservation", ORDER),
        ("Charge", BOB),  # rejected
        ("CancelOrder", ORDER),
        ("RecordPayment", ORDER),  # a no-op
        ("Release", INV_MUG),
        ("Release", INV_TEE),
        ("Refund", BOB),  # a no-op
        ("CompleteCancellation", ORDER),
    ),
    "cancelled",
    {
        ORDER: ["OrderPlaced", "InventoryReserved", *UNDONE],
        INV_MUG: ["StockAdded", "StockReserved", "ReservationReleased"],
        INV_TEE: ["StockAdded", "StockReserved", "ReservationReleased"],
        BOB: ["FundsAdded"],
    },
)
CANCELLED_AT_ONCE = Scenario(
    "cancelled-at-once",
    "ann",
    3,
    True,
    stream_calls(
        ("Release", INV_MUG),
        ("Release", INV_TEE),
        ("Refund", ANN),
        ("CompleteCancellation", ORDER),
    ),
    "cancelled",
    {ORDER: ["OrderPlaced", *UNDONE], INV_MUG: ["StockAdded"], INV_TEE: ["StockAdded"]},
)
SCENARIOS = [HAPPY, OUT_OF_STOCK, DECLINED, CANCELLED_AT_ONCE]


def given_order(store: EventStore, scenario: Scenario) -> None:
    """Stock, funds, and the scenario's order (cancelled at once if it says so)."""
    stock_up(store)
    orders = CommandHandler(store, order)
    orders.handle(ORDER, PlaceOrder(scenario.customer, lines(2, scenario.tees)))
    if scenario.cancel_at_once:
        orders.handle(ORDER, CancelOrder("changed my mind"))


def assert_outcome(store: EventStore, scenario: Scenario) -> None:
    """The order's status, every stream's exact history, and conservation."""
    assert CommandHandler(store, order).load(ORDER).state.status == scenario.status
    for stream, types in scenario.history.items():
        assert [e.type.removeprefix("orders.") for e in store.read(stream)] == types, stream
    assert_conserved(store, ["o1"] if scenario.status == "shipped" else [])


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_flow_path(scenario: Scenario, open_store: Callable[[], Any]) -> None:
    store = open_store()
    given_order(store, scenario)
    fault = Fault()

    App(store, fault).runner.run_once()

    assert fault.calls == scenario.calls
    assert_outcome(store, scenario)
    # Redelivering every event from the start changes nothing.
    position = store.last_position()
    App(open_store()).runner.rebuild(replay_effects=True)  # its commands carry ids: safe
    assert store.last_position() == position
    assert_outcome(store, scenario)


def test_cancellation_reason_names_the_failed_step(open_store: Callable[[], Any]) -> None:
    store = open_store()
    given_order(store, DECLINED)
    App(store).runner.run_once()
    state = CommandHandler(store, order).load(ORDER).state
    assert state.reason == f"{BOB}: {PaymentDeclined(5_000, state.total)}"


def test_a_cancelled_order_is_not_charged_on_redelivery(open_store: Callable[[], Any]) -> None:
    """Bob's payment was declined and the order cancelled. He then tops his wallet up,
    and the flow's checkpoint is lost: the redelivered InventoryReserved must not charge
    him now, since nothing would ever refund a charge made after the cancellation."""
    store = open_store()
    given_order(store, DECLINED)
    App(store).runner.run_once()
    CommandHandler(store, payment).handle(BOB, AddFunds(10_000))

    App(open_store()).runner.rebuild(replay_effects=True)  # its commands carry ids: safe

    assert [e.type for e in store.read(BOB)] == ["orders.FundsAdded", "orders.FundsAdded"]
    assert CommandHandler(store, payment).load(BOB).state.balance == 15_000
    assert CommandHandler(store, order).load(ORDER).state.status == "cancelled"


# -- the customer cancels just before each step of the flow -----------------------------------


@pytest.mark.parametrize("step", range(1, len(HAPPY.calls) + 1))
def test_customer_cancels_before_each_step(step: int, open_store: Callable[[], Any]) -> None:
    store = open_store()
    given_order(store, HAPPY)
    answers: list[str] = []

    def customer_cancels() -> None:
        try:
            CommandHandler(store, order).handle(ORDER, CancelOrder("changed my mind"))
            answers.append("accepted")
        except AlreadyShipped:
            answers.append("refused")

    fault = Fault(step, "before", customer_cancels)
    App(store, fault).runner.run_once()

    assert fault.fired
    shipped = HAPPY.calls.index(f"Ship {INV_MUG}") + 1  # OrderShipped is recorded before it
    assert answers == (["refused"] if step >= shipped else ["accepted"])
    status = CommandHandler(store, order).load(ORDER).state.status
    assert status == ("shipped" if step >= shipped else "cancelled")
    assert_conserved(store, ["o1"] if status == "shipped" else [])


# -- a crash at every step of every path --------------------------------------------------------

CRASH_POINTS = [
    pytest.param(scenario, step, when, id=f"{scenario.name}-step{step}-{when}")
    for scenario in SCENARIOS
    for step in range(1, len(scenario.calls) + 1)
    for when in ("before", "after")
]


@pytest.mark.parametrize(("scenario", "step", "when"), CRASH_POINTS)
def test_crash_at_every_step_then_restart(
    scenario: Scenario,
    step: int,
    when: Literal["before", "after"],
    open_store: Callable[[], Any],
) -> None:
    store = open_store()
    given_order(store, scenario)
    fault = Fault(step, when)

    with pytest.raises(ProjectionStopped) as stopped:
        App(store, fault).runner.run_once()

    assert fault.fired and fault.calls == scenario.calls[:step]
    assert isinstance(stopped.value.error, StoreUnavailable)
    App(open_store()).runner.run_once()  # the restarted worker resumes from its checkpoint
    assert_outcome(open_store(), scenario)


# -- many orders competing for stock and money --------------------------------------------------


def test_many_orders_conserve_stock_and_money(open_store: Callable[[], Any]) -> None:
    store = open_store()
    stock_up(store)
    orders = CommandHandler(store, order)
    app = App(store)
    answers: list[str] = []

    def cancel(order_id: str) -> None:
        try:
            orders.handle(order_stream(order_id), CancelOrder("changed my mind"))
            answers.append("accepted")
        except AlreadyShipped:
            answers.append("refused")

    for n in range(12):
        customer = "ann" if n % 2 else "bob"
        orders.handle(order_stream(f"m{n}"), PlaceOrder(customer, lines(1 + n % 3, n % 2 + 1)))
        if n % 4 == 0:
            app.runner.run_once()  # the flow gets through the orders placed so far
        if n % 5 == 1:
            cancel(f"m{n}")  # before the flow saw it
        if n in (5, 9):
            cancel(f"m{n - 5}")  # after the flow handled it: too late if it shipped
    app.runner.run_once()

    assert sorted(set(answers)) == ["accepted", "refused"]
    statuses = {f"m{n}": orders.load(order_stream(f"m{n}")).state.status for n in range(12)}
    assert set(statuses.values()) == {"shipped", "cancelled"}
    assert_conserved(store, [o for o, status in statuses.items() if status == "shipped"])
