"""The preference centre behind an unsubscribe link: what it shows and what saving does.

The link token names a delivery, hence a recipient; having the link proves the person
reads that mailbox, which is why the page can change consents without a login. Leaving is
always allowed. Joining a topic (again) or turning the master switch off is allowed only
while the link is recent (``[pages] rejoin_window`` since its message was received): an
old message found in an archive or a forwarded mail proves little about who reads the
mailbox today.

The page shows the marketing lists the person has a consent for (any status) and the list
the link came from. Saving reads the current state, plans (:func:`plan`, pure) and applies
the plan in one write transaction (:func:`save`), so two saves at once cannot both act on
the same old state:

- an unticked topic is left as the one-click unsubscribe leaves it (consent withdrawn,
  list suppression, queued mail of the list dropped);
- a ticked topic that was not confirmed is confirmed (if the link is recent);
- the frequency changes only when the person changed the menu (the form carries the value
  it showed), and then for every kept topic;
- the master switch leaves all marketing (a global unsubscribe suppression, every topic
  withdrawn, pending double opt-ins too); turning it off again lifts that suppression only.

Every change appends a consent history row with source ``preference-page``, the client's
IP address and user agent, and the time; the master switch's rows have list key "".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.ingest.addresses import address_hash
from gateway.ingest.rules import FREQUENCIES
from gateway.ingest.unsubscribe import ALL_MARKETING, Click, leave_all, leave_list, record_unsubscribed
from gateway.queue import references
from gateway.rewrite.tokens import Purpose, TokenCodec
from gateway.storage import consent_store
from gateway.storage.consent_store import ConsentChange
from gateway.storage.database import Database
from gateway.storage.queue_store import DeliveryRef

SOURCE = "preference-page"
LIFTED = "lifted"  # history status of list "": the global unsubscribe was lifted (no topic joined)
DEFAULT_REJOIN_WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class Topic:
    key: str
    names: Mapping[str, str]
    descriptions: Mapping[str, str]
    subscribed: bool  # consent confirmed
    frequency: str | None
    pending: bool = False  # a double opt-in waiting for its confirmation


@dataclass(frozen=True)
class PreferenceView:
    """What the page shows for one link."""

    ref: DeliveryRef
    topics: tuple[Topic, ...]
    all_off: bool  # left all marketing (global unsubscribe)
    locale: str | None  # the contact's stored locale
    erased: bool = False  # an erased contact can leave topics, not join them
    sent_at: datetime | None = None  # when the link's message was received
    recent: bool = True  # the link may (re)join topics: see [pages] rejoin_window

    @property
    def can_join(self) -> bool:
        return self.recent and not self.erased

    @property
    def frequency(self) -> str | None:
        """The choice shown: the most common among the kept topics."""
        chosen = Counter(t.frequency for t in self.topics if t.subscribed and t.frequency)
        return chosen.most_common(1)[0][0] if chosen else None

    def ticked(self, topic: Topic) -> bool:
        """Shown ticked: confirmed, and not overruled by the master switch."""
        return topic.subscribed and not self.all_off

    def topic(self, key: str) -> Topic | None:
        return next((t for t in self.topics if t.key == key), None)


@dataclass(frozen=True)
class Choice:
    """A submitted form: the topics it showed, the ones left ticked, frequency, master switch."""

    shown: frozenset[str]
    keep: frozenset[str]
    frequency: str | None  # None: leave as is (the menu was not changed)
    all_off: bool | None  # None: leave the master switch as it is


@dataclass(frozen=True)
class Plan:
    leave: tuple[str, ...] = ()
    join: tuple[str, ...] = ()
    refrequency: tuple[str, ...] = ()
    frequency: str | None = None
    all_off: bool | None = None  # True: leave all marketing; False: come back; None: unchanged

    @property
    def empty(self) -> bool:
        return not (self.leave or self.join or self.refrequency) and self.all_off is None


@dataclass(frozen=True)
class Saved:
    plan: Plan
    dropped: int  # queued copies that will not be sent
    changes: int = 0  # history rows written
    conflict: tuple[str, ...] = ()  # topics ticked while all marketing stayed off: nothing done


class BadChoice(ValueError):
    """A form that no page of ours could have sent (unknown frequency)."""


class TicksWhileAllOff(ValueError):
    """Topics ticked while the master switch stays on: which one did the person mean?"""

    def __init__(self, keys: tuple[str, ...]) -> None:
        super().__init__(", ".join(keys))
        self.keys = keys


def choice_from_form(form: Mapping[str, list[str]]) -> Choice:
    """The form fields: ``shown`` and ``topic`` (repeated list keys), ``frequency`` and the
    value the menu showed (``shown_frequency``), ``all_off``.

    The frequency counts as chosen only when it differs from the one the menu showed, so
    saving without touching the menu changes no frequency. A form without
    ``shown_frequency`` (not one of our pages) counts as having shown "No preference".
    """
    frequency = _frequency(form, "frequency")
    shown_frequency = _frequency(form, "shown_frequency")
    return Choice(frozenset(form.get("shown", [])), frozenset(form.get("topic", [])),
                  frequency if frequency != shown_frequency else None,
                  (form.get("all_off") or [""])[-1] == "on")


def _frequency(form: Mapping[str, list[str]], field: str) -> str | None:
    value = (form.get(field) or [""])[-1] or None
    if value is not None and value not in FREQUENCIES:
        raise BadChoice(f"unknown {field} {value!r}")
    return value


def leaving_one(view: PreferenceView, key: str) -> Choice:
    """The quick "unsubscribe from this list" button: that list only, everything else as it is."""
    return Choice(frozenset({key}), frozenset(), None, None)


def plan(view: PreferenceView, choice: Choice) -> Plan:
    """The changes a submitted form asks for; a form sent twice plans nothing the second time.

    Raises TicksWhileAllOff when the form ticks topics not shown ticked and keeps (or turns)
    the master switch on: the two contradict each other, so nothing is guessed.
    """
    topics = [t for t in view.topics if t.key in choice.shown]
    if choice.all_off:
        contradicting = tuple(t.key for t in topics if t.key in choice.keep and not view.ticked(t))
        if contradicting:
            raise TicksWhileAllOff(contradicting)
        return Plan(leave=tuple(t.key for t in topics if t.subscribed or t.pending),
                    all_off=None if view.all_off else True)
    return Plan(
        leave=tuple(t.key for t in topics if t.subscribed and t.key not in choice.keep),
        join=tuple(t.key for t in topics if view.can_join and not t.subscribed and t.key in choice.keep),
        refrequency=tuple(t.key for t in topics if t.subscribed and t.key in choice.keep
                          and choice.frequency is not None and t.frequency != choice.frequency),
        frequency=choice.frequency,
        all_off=False if view.all_off and choice.all_off is False and view.can_join else None)


# -- IO ---------------------------------------------------------------------------------------

async def load_view(db: Database, codec: TokenCodec, token: str, now: datetime,
                    window: timedelta = DEFAULT_REJOIN_WINDOW) -> PreferenceView:
    """The page for a link (raises BadToken for a link we did not issue)."""
    ref = await references.resolve(db, codec, token, Purpose.UNSUBSCRIBE)
    return await db.read(lambda conn: _view(conn, ref, now, window))


async def save(db: Database, ref: DeliveryRef, choose: Callable[[PreferenceView], Choice], click: Click,
               window: timedelta = DEFAULT_REJOIN_WINDOW) -> Saved:
    """Read the current state, plan and apply in one write transaction.

    The database's writer runs one transaction at a time, so a second save (a double click)
    sees what the first wrote and plans nothing more.
    """
    async def write(conn: AsyncConnection) -> Saved:
        view = await _view(conn, ref, click.at, window)
        try:
            steps = plan(view, choose(view))
        except TicksWhileAllOff as contradiction:
            return Saved(Plan(), 0, conflict=contradiction.keys)
        if steps.empty:
            return Saved(steps, 0)
        return await _apply(conn, view, steps, click)

    return await db.write(write)


async def _view(conn: AsyncConnection, ref: DeliveryRef, now: datetime, window: timedelta) -> PreferenceView:
    digest = address_hash(ref.recipient)
    contact = await consent_store.contact_by_hash(conn, digest)
    current = {c.list_key: c for c in await consent_store.consents_of(conn, contact.id)} if contact else {}
    topics = []
    for record in await consent_store.all_lists(conn):
        if record.kind != "marketing" or (record.key not in current and record.key != ref.list_key):
            continue
        consent = current.get(record.key)
        status = consent.status if consent else None
        topics.append(Topic(record.key, record.names, record.descriptions, status == "confirmed",
                            consent.frequency if consent else None, pending=status == "pending"))
    topics.sort(key=lambda t: (t.key != ref.list_key, t.key))  # the link's own list first
    sent_at = await consent_store.message_received_at(conn, ref.delivery_id)
    return PreferenceView(ref, tuple(topics), await consent_store.global_unsubscribe(conn, digest, now),
                          contact.locale if contact else None, bool(contact and contact.erased_at),
                          sent_at, recent=sent_at is not None and now - sent_at <= window)


async def _apply(conn: AsyncConnection, view: PreferenceView, steps: Plan, click: Click) -> Saved:
    recipient = view.ref.recipient
    digest = address_hash(recipient)
    contact = await consent_store.contact_id(conn, recipient, digest, click.at)
    proof = f"preference page: {_describe(steps)}; {_link_proof(view)}"
    dropped, changes = 0, 0

    def change(list_key: str, status: str, frequency: str | None = None) -> ConsentChange:
        return ConsentChange(contact, digest, list_key, status, SOURCE, click.at, frequency=frequency,
                             ip=click.ip, user_agent=click.user_agent, proof=proof)

    for key in steps.leave:
        left = await leave_list(conn, recipient, key, click, proof)
        await record_unsubscribed(conn, view.ref, key, click, left)
        dropped += left.dropped
        changes += 1
    for key in (*steps.join, *steps.refrequency):
        await consent_store.record_consent(conn, change(key, "confirmed", steps.frequency))
        changes += 1
    if steps.all_off is True:
        left = await leave_all(conn, recipient, click, proof)  # writes the "" history row
        await record_unsubscribed(conn, view.ref, "", click, left)
        dropped += left.dropped
        changes += int(left.changed)
    elif steps.all_off is False:
        await consent_store.remove_suppressions(conn, digest, scope="global", scope_key="",
                                                reason="unsubscribe")
        await consent_store.append_history(conn, change(ALL_MARKETING, LIFTED))
        changes += 1
    return Saved(steps, dropped, changes)


def _describe(steps: Plan) -> str:
    """The proof text: what the saved form asked for, in one line."""
    parts = []
    if steps.all_off is not None:
        parts.append("all marketing " + ("off" if steps.all_off else "on"))
    for label, keys in (("left", steps.leave), ("joined", steps.join), ("frequency of", steps.refrequency)):
        if keys:
            parts.append(f"{label} {', '.join(keys)}")
    if steps.frequency and (steps.join or steps.refrequency):
        parts.append(f"frequency {steps.frequency}")
    return "; ".join(parts)


def _link_proof(view: PreferenceView) -> str:
    """Which link was used, and its age: the mailbox is proven by a recent delivery to it."""
    sent = view.sent_at.strftime("%Y-%m-%d %H:%M UTC") if view.sent_at else "unknown date"
    return f"link of delivery {view.ref.delivery_id} sent {sent}"
