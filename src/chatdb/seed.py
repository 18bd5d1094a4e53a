"""Synthetic data at scale: users, conversations, members and messages, loaded with COPY.

The shape follows real chat traffic: popularity is power-law (a few users are in
hundreds of conversations, most in a handful), message counts per conversation
are Zipf-like (a few very busy conversations, a long quiet tail, some empty),
activity follows the hour of the day and the day of the week, some users never
send and some stopped sending more than 30 days ago, and most members have read
everything while some have unread messages.

Reproducible: every random choice comes from generators seeded by
``plan.seed`` and is made on time offsets within the window, never on the
clock, so the same plan gives the same rows whenever it runs: ids, usernames,
emails, members, roles, read markers, message counts, seqs, senders and
bodies. Timestamps are those offsets placed on the real calendar ending at the
second the seed starts (quiet nights and weekends fall on real nights and
weekends), so they, and only they, depend on when the seed runs. Ids start
above the largest existing id (or the identity sequence, if higher): on an
empty database they are identical run to run; on a non-empty one everything is
the same up to that shift (usernames and emails contain the id, so a second
seed never collides with the first).

Fast: rows are built in Python as PostgreSQL's binary COPY format (no text
parsing of timestamps on either side) and streamed in large chunks, so Python
generates while the server inserts. When conversation_members or messages is
empty at the start, the seed runs in bulk mode for it: the table is truncated
(it is empty, so nothing is lost; this lets COPY FREEZE write the rows already
frozen and all-visible, so index-only scans work without a VACUUM), and its
primary key, indexes and foreign keys are dropped and recreated from their
catalog definitions after the load, leaving the schema as it was. Sorting once
to build an index is far cheaper than millions of index insertions, and one
validation query per foreign key far cheaper than a trigger per row. A seed
into non-empty tables keeps everything in place (correct, just slower).
Everything runs in one transaction: all or nothing. The four tables are locked
against writes (EXCLUSIVE) while it runs; in bulk mode the rebuilt tables are
locked against reads too.
"""

from __future__ import annotations

import random
import struct
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate, count, islice
from operator import ge
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine

from chatdb.errors import Conflict, Invalid
from chatdb.models import BODY_MAX, DISPLAY_NAME_MAX, TITLE_MAX, USERNAME_MAX


@dataclass(frozen=True, slots=True)
class SeedPlan:
    users: int = 1_000
    conversations: int = 2_000
    messages: int = 100_000
    seed: int = 42  # makes the data reproducible
    big_groups: int = 2  # groups with thousands of members (capped by users)
    big_group_size: int = 2_000
    days: int = 90  # messages spread over the last `days` days, ending now


@dataclass(frozen=True, slots=True)
class SeedReport:
    users: int
    conversations: int
    members: int
    messages: int
    seconds: float
    # Wall seconds of each phase, in order (plan, users, conversations,
    # messages, members, indexes, activity, analyze): where a load's time goes.
    # A phase runs until the next begins: "plan" also holds connecting, locking
    # and emptying the tables, "activity" the commit.
    phase_seconds: dict[str, float] = field(default_factory=dict)


ProgressCallback = Callable[[str, int, int], None]  # (phase, done, total)


def seed(engine: Engine, plan: SeedPlan, progress: ProgressCallback | None = None) -> SeedReport:
    """Add the plan's users, conversations, members and messages in one transaction."""
    _check_plan(plan)
    started = time.perf_counter()
    clock = _PhaseClock(progress or _ignore_progress)
    report: ProgressCallback = clock
    # The window ends at the second the seed starts; see the module docstring.
    now = (int(time.time()) - _PG_EPOCH_UNIX) * _SECOND
    report("plan", 0, 1)
    world = _build_world(plan, now)
    report("plan", 1, 1)
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        if not isinstance(conn, psycopg.Connection):
            raise TypeError("chatdb.seed needs an engine on the psycopg (3) driver")
        # The pool's pre-ping may have left a transaction open; start from a clean state
        # so that commit() below really ends ours.
        conn.rollback()
        try:
            members = _load(conn, world, report)
            conn.commit()
        except BaseException as exc:
            with suppress(psycopg.Error):
                conn.rollback()
            if conn.broken:
                raw.invalidate()
            if isinstance(exc, psycopg.errors.UniqueViolation):
                # Usernames contain the new ids, so only a hand-made name of the same
                # shape can collide; say which one.
                raise Conflict(
                    f"seeding would duplicate existing data ({exc.diag.message_detail or exc}); "
                    "nothing was written"
                ) from exc
            raise
        _analyze(conn, report)
    finally:
        raw.close()
    return SeedReport(
        users=plan.users,
        conversations=plan.conversations,
        members=members,
        messages=plan.messages,
        seconds=time.perf_counter() - started,
        phase_seconds=clock.durations(),
    )


def _ignore_progress(phase: str, done: int, total: int) -> None:
    return


class _PhaseClock:
    """Passes progress on and notes when each phase begins; a phase ends when
    the next one begins, the last one when `durations` is called."""

    def __init__(self, forward: ProgressCallback) -> None:
        self._forward = forward
        self._starts: dict[str, float] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        self._starts.setdefault(phase, time.perf_counter())
        self._forward(phase, done, total)

    def durations(self) -> dict[str, float]:
        marks = [*self._starts.values(), time.perf_counter()]
        return {
            phase: round(end - start, 2)
            for phase, start, end in zip(self._starts, marks, marks[1:], strict=False)
        }


def _check_plan(plan: SeedPlan) -> None:
    for name in ("users", "conversations", "messages", "big_groups", "big_group_size"):
        if getattr(plan, name) < 0:
            raise Invalid(f"{name.replace('_', ' ')} must not be negative")
    if plan.days < 1:
        raise Invalid("days must be at least 1")
    if plan.conversations and not plan.users:
        raise Invalid("conversations need users: plan at least one user")
    if plan.messages and not plan.conversations:
        raise Invalid("messages need conversations: plan at least one conversation")
    if plan.messages > plan.days * _MESSAGES_PER_DAY_MAX:
        raise Invalid(
            f"at most {_MESSAGES_PER_DAY_MAX:,} messages per day: plan fewer messages or more days"
        )


# --- time ----------------------------------------------------------------------------------

# Binary COPY takes timestamptz as microseconds since 2000-01-01 UTC.
_PG_EPOCH_UNIX = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp())
_SECOND = 1_000_000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
_WEEK = 7 * _DAY

# Relative message rate per UTC hour; weekends (2000-01-01 was a Saturday, so
# days 0 and 1 of each week counted from the epoch) are quieter.
_HOURLY = (2, 1.5, 1, 1, 1.2, 2, 4, 7, 9, 10, 10, 9.5, 9, 9.5, 10, 10, 9.5, 9, 8.5, 8, 7, 6, 4.5, 3)
_WEEKEND = 0.55
_WARP_STEPS = 4096
# One per millisecond on average: even if one conversation had them all, each
# message gets its own microsecond.
_MESSAGES_PER_DAY_MAX = _DAY // 1_000


class _Clock:
    """Maps offsets (microseconds after the window's start) to wall-clock times.

    Every decision is made on offsets drawn uniformly, so the data does not
    depend on when the seed runs; only this map does. It is monotone (order is
    kept) and bends time so that message density follows _HOURLY and the
    weekend, on the real calendar: a piecewise-linear table over a week, so it
    costs a few arithmetic operations per message. Offset 0 is the start of the
    window and offset `span` is now, whatever weekday and hour now is.
    """

    def __init__(self, start: int, now: int) -> None:
        slots = [_HOURLY[h] * (_WEEKEND if d < 2 else 1.0) for d in range(7) for h in range(24)]
        total = sum(slots)
        cdf = [0.0, *(c / total for c in accumulate(slots))]
        cdf[-1] = 1.0
        # table[j]: the point in the week by which the fraction j/STEPS of the
        # week's messages has been sent.
        table = []
        for j in range(_WARP_STEPS + 1):
            u = j / _WARP_STEPS
            h = min(bisect_right(cdf, u) - 1, len(slots) - 1)
            table.append((h + (u - cdf[h]) / (cdf[h + 1] - cdf[h])) * _HOUR)
        table[-1] = float(_WEEK)
        self._table = table
        self.span = now - start
        self._origin = self._unbend(start)
        self._scale = (self._unbend(now) - self._origin) / self.span
        while self.wall([self.span])[0] > now:  # rounding must never reach the future
            self._scale *= 1 - 1e-12

    def wall(self, offsets: list[int]) -> list[int]:
        table, origin, scale = self._table, self._origin, self._scale
        steps_per_us = _WARP_STEPS / _WEEK
        out = []
        for x in offsets:
            week, in_week = divmod(origin + int(x * scale), _WEEK)
            pos = in_week * steps_per_us
            j = int(pos)
            low = table[j]
            out.append(week * _WEEK + int(low + (table[j + 1] - low) * (pos - j)))
        return out

    def _unbend(self, t: int) -> int:
        """The inverse of the weekly bend: where wall-clock time t comes from."""
        week, in_week = divmod(t, _WEEK)
        table = self._table
        j = min(bisect_right(table, in_week) - 1, _WARP_STEPS - 1)
        frac = (in_week - table[j]) / (table[j + 1] - table[j])
        return week * _WEEK + int((j + frac) * _WEEK / _WARP_STEPS)


def _strictly_increasing(times: list[int], after: int) -> None:
    """Nudge equal neighbours apart by microseconds, keeping the last value and after < all."""
    for i in range(len(times) - 2, -1, -1):
        if times[i] >= times[i + 1]:
            times[i] = times[i + 1] - 1
    previous = after
    for i, t in enumerate(times):
        if t <= previous:
            times[i] = previous + 1
        previous = times[i]


# --- the world: who is in which conversation, how busy it is --------------------------------

_ACTIVE, _LURKER, _GONE = 0, 1, 2
_FOREVER = 1 << 62


@dataclass(slots=True)
class _World:
    plan: SeedPlan
    # Users, in id order (index i gets the i-th new id).
    user_created: list[int]  # wall clock
    user_weight: list[float]  # how much they talk, relative to others in a conversation
    user_until: list[int]  # no message after this offset; -1: never sends
    # Conversations, in id order.
    conv_direct: list[bool]
    conv_title: list[str | None]
    conv_members: list[list[int]]  # user indexes; the first is always a user who sends
    conv_owners: list[int]  # the first conv_owners[c] members are owners
    conv_created: list[int]  # wall clock
    conv_start: list[int]  # offset: messages come after this...
    conv_last: list[int]  # ...and the last one is exactly at this offset
    conv_messages: list[int]
    clock: _Clock
    member_count: int
    # Filled while messages are generated, read when members are written.
    last_read: list[list[int]] = field(default_factory=list)


def _rng(plan: SeedPlan, stream: str) -> random.Random:
    # One generator per stream, so changing how one part is drawn leaves the others alone.
    return random.Random(f"chatdb-seed/{plan.seed}/{stream}")


def _zipf_weights(rng: random.Random, n: int, exponent: float, offset: float) -> list[float]:
    """Power-law weights in random order, with a little noise so equal ranks differ."""
    ranks = list(range(n))
    rng.shuffle(ranks)
    return [(0.75 + 0.5 * rng.random()) / (r + offset) ** exponent for r in ranks]


def _build_world(plan: SeedPlan, now: int) -> _World:
    clock = _Clock(now - plan.days * _DAY, now)
    span = clock.span
    n_users = plan.users

    rng = _rng(plan, "users")
    popularity = _zipf_weights(rng, n_users, exponent=0.9, offset=1.5)
    kind = [_ACTIVE] * n_users
    # Lurkers never send; gone users stopped more than 30 days ago. Together with users
    # in no conversation they make "inactive users" a real question.
    quiet = rng.sample(range(n_users), 2 * (n_users // 12))
    for i, u in enumerate(quiet):
        kind[u] = _LURKER if i % 2 == 0 else _GONE
    # 34 days of offsets are over 30 days of wall clock, however the rhythm bends them.
    gone_before = span - 34 * _DAY
    until = [
        _FOREVER
        if k == _ACTIVE
        else rng.randint(0, gone_before)
        if k == _GONE and gone_before > 0
        else -1
        for k in kind
    ]
    active = [u for u in range(n_users) if kind[u] == _ACTIVE]
    active_cum = list(accumulate(popularity[u] for u in active))
    all_cum = list(accumulate(popularity))
    weight = [p**0.4 * (0.3 + rng.random()) for p in popularity]

    rng = _rng(plan, "conversations")
    n_conv = plan.conversations
    n_big = min(plan.big_groups, n_conv)
    possible_pairs = n_users * (n_users - 1) // 2
    # At most about half of all pairs, so drawing a new pair never takes long.
    n_direct = min(round((n_conv - n_big) * 0.6), (possible_pairs + 1) // 2)
    kinds = ["big"] * n_big + ["direct"] * n_direct + ["group"] * (n_conv - n_big - n_direct)
    rng.shuffle(kinds)

    def pick(cum: list[float], population: Sequence[int]) -> int:
        return population[bisect_right(cum, rng.random() * cum[-1], 0, len(cum) - 1)]

    users_range = range(n_users)
    pairs: set[tuple[int, int]] = set()
    members: list[list[int]] = []
    owners: list[int] = []
    titles: list[str | None] = []
    big_seen = 0
    for k in kinds:
        anchor = pick(active_cum, active) if active else 0
        if k == "direct":
            for attempt in range(64):
                # Popular users mostly talk to popular users; when those pairs are
                # taken, fall back to anyone.
                other = pick(all_cum, users_range) if attempt < 8 else rng.randrange(n_users)
                pair = (min(anchor, other), max(anchor, other))
                if other != anchor and pair not in pairs:
                    break
                if attempt >= 16:
                    anchor = active[rng.randrange(len(active))]
            else:  # pragma: no cover - vanishingly unlikely at this occupancy
                raise RuntimeError("could not find a free pair of users")
            pairs.add(pair)
            members.append([anchor, other])
            owners.append(2)
            titles.append(None)
        elif k == "big":
            size = max(1, min(plan.big_group_size, n_users))
            chosen = rng.sample(users_range, size)
            if anchor in chosen:
                chosen.remove(anchor)
            else:
                chosen.pop()
            members.append([anchor, *chosen])
            owners.append(min(size, 2 + rng.randrange(3)))
            titles.append(_big_group_title(rng, big_seen))
            big_seen += 1
        else:
            size = min(n_users, 50, 2 + int(rng.paretovariate(1.2)))
            chosen_set = {anchor}
            chosen_list = [anchor]
            for _ in range(8 * size):
                if len(chosen_list) >= size:
                    break
                u = pick(all_cum, users_range)
                if u not in chosen_set:
                    chosen_set.add(u)
                    chosen_list.append(u)
            if len(chosen_list) < size:
                rest = [u for u in users_range if u not in chosen_set]
                chosen_list += rng.sample(rest, size - len(chosen_list))
            members.append(chosen_list)
            owners.append(1 if size < 3 or rng.random() < 0.85 else 2)
            titles.append(_group_title(rng))

    # Message counts: Zipf over conversations, big groups among the busiest, a few empty.
    rng = _rng(plan, "activity")
    conv_weight = _zipf_weights(rng, n_conv, exponent=1.0, offset=1.0)
    for c, k in enumerate(kinds):
        if k == "big":
            conv_weight[c] = 1.0 / (1 + rng.randrange(10))
        elif rng.random() < 0.04 and n_conv > 1:
            conv_weight[c] = 0.0
    total_weight = sum(conv_weight)
    if total_weight == 0.0:
        conv_weight = [1.0] * n_conv
        total_weight = float(n_conv)
    n_messages = plan.messages
    counts = [int(n_messages * w / total_weight) for w in conv_weight]
    remainder = n_messages - sum(counts)
    if remainder:
        for c in rng.choices(range(n_conv), weights=conv_weight, k=remainder):
            counts[c] += 1

    # When: conversations are mostly created early in the window (so they have a
    # history); a quarter went quiet at some point, big groups never do.
    conv_start: list[int] = []
    conv_last: list[int] = []
    for c, n in enumerate(counts):
        # A busy conversation needs a long history: about two minutes per message
        # (within 80% of the window), and never less than 1 ms per message, so that
        # timestamps stay distinct even where the clock is bent into quiet hours.
        room = max(10 * _MINUTE, min(2 * _MINUTE * n, span * 4 // 5), 1_000 * n)
        started = int(max(span - room, 0) * rng.random() ** 1.6)
        if kinds[c] == "big":
            started = int(max(span - room, 0) * 0.05 * rng.random())
        horizon = span
        if kinds[c] != "big" and rng.random() < 0.25:
            horizon = started + max(room, int((span - started) * (0.2 + 0.8 * rng.random())))
        # The latest of n uniform times is Beta(n, 1): drawn here, so the conversation's
        # last activity is known before its messages are generated.
        last = (
            started
            if n == 0
            else started + max(room, int((horizon - started) * rng.random() ** (1 / n)))
        )
        conv_start.append(started)
        conv_last.append(min(last, span))

    # Ids follow creation time, as they would in a live system.
    conv_order = sorted(range(n_conv), key=lambda c: (conv_start[c], c))

    # A user signed up before their first conversation; users in none signed up any time.
    first_seen = [_FOREVER] * n_users
    for c in range(n_conv):
        created = conv_start[c]
        for u in members[c]:
            if created < first_seen[u]:
                first_seen[u] = created
    rng = _rng(plan, "signup")
    earliest = -365 * _DAY
    user_created = [
        rng.randint(earliest, span - _MINUTE)
        if seen == _FOREVER
        else seen - int((seen - earliest) * rng.random() ** 3)
        for seen in first_seen
    ]
    user_order = sorted(range(n_users), key=lambda u: (user_created[u], u))
    user_index = [0] * n_users
    for i, u in enumerate(user_order):
        user_index[u] = i

    return _World(
        plan=plan,
        user_created=clock.wall([user_created[u] for u in user_order]),
        user_weight=[weight[u] for u in user_order],
        user_until=[until[u] for u in user_order],
        conv_direct=[kinds[c] == "direct" for c in conv_order],
        conv_title=[titles[c] for c in conv_order],
        conv_members=[[user_index[u] for u in members[c]] for c in conv_order],
        conv_owners=[owners[c] for c in conv_order],
        conv_created=clock.wall([conv_start[c] for c in conv_order]),
        conv_start=[conv_start[c] for c in conv_order],
        conv_last=[conv_last[c] for c in conv_order],
        conv_messages=[counts[c] for c in conv_order],
        clock=clock,
        member_count=sum(len(m) for m in members),
    )


# --- names and text --------------------------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_FIRST = _words(
    "Alice Amara Ana Ben Bruno Chen Chloe Dan Diego Elena Emma Farah Felix Grace Hana Hugo "
    "Ines Ivan Jack Jonas Julia Kai Karim Lea Leo Lina Lucas Maya Mei Mila Nadia Noah Nora "
    "Omar Oscar Paula Priya Rafael Rosa Sam Sara Sofia Tariq Theo Uma Victor Wen Yara Yusuf "
    "Zoe Chloé José Zoë Łukasz Søren Aiko Björn"
)
_LAST = _words(
    "Adams Ahmed Alvarez Bauer Becker Costa Dubois Evans Fischer Garcia Haddad Hansen Ito "
    "Jensen Khan Kim Kowalski Larsen Lopez Martin Meyer Moreau Müller Nakamura Novak Okafor "
    "Olsen Patel Perez Petrov Rossi Santos Schmidt Silva Singh Smith Tanaka Taylor Wang "
    "Weber Williams Yilmaz Zhang Núñez Çelik Ødegaard"
)
_ASCII = str.maketrans("éëöøØñúüçÇŁł", "eeooOnuucCLl")
_DOMAINS = ("example.com", "example.org", "example.net")

_TITLE_A = _words(
    "Weekend Morning Friday Project Book Design Backend Frontend Family Climbing Running "
    "Garden Movie Board-game Coffee Lunch Release Incident Hiring Marketing Travel Music"
)
_TITLE_B = _words("club crew team squad chat group circle planning updates gang people")
_BIG_TITLES = ("All hands", "Announcements", "General", "Company-wide", "Random", "Help desk")

# Bodies are sentences from a small grammar: plausible to read, cheap to make.
_SUBJECTS = ("I", "We", "You", "They", "Sam", "The team", "Everyone", "Mina", "My manager")
_PAST = _words(
    "pushed reviewed moved fixed booked sent finished updated cancelled shared merged tested "
    "found broke rewrote approved"
)
_VERBS = _words("push review move fix book send finish update cancel share merge test check")
_THINGS = (
    "the deploy", "the slides", "the budget report", "the release notes", "the flight",
    "the table for tonight", "the migration", "the login bug", "the photos", "the invoice",
    "the new index", "the playlist", "the onboarding doc", "the PR", "the train tickets",
    "the meeting", "the grocery list", "the design mockups", "the contract", "the dashboard",
)  # fmt: skip
_WHEN = (
    "today", "tomorrow", "tonight", "after lunch", "this morning", "on Friday", "next week",
    "in an hour", "before standup", "later", "at 3pm", "over the weekend", "right now",
)  # fmt: skip
_EVENTS = (*_words("lunch coffee drinks standup dinner"), "the movie", "the hike", "the game")
_FEELINGS = _words("great perfect weird annoying hilarious fine slow better broken amazing")
_STATES = (*_words("delayed done blocked moved live ready"), "on hold")
_TEMPLATES = (
    "{S} {P} {T} {W}.",
    "Can you {V} {T} {W}?",
    "Did anyone {V} {T}?",
    "I'll {V} {T} {W}.",
    "Are we still on for {E} {W}?",
    "{T} looks {F} to me.",
    "Not sure about {T}, let's talk {W}.",
    "Just {P} {T}, it's {F} now.",
    "Who's in for {E} {W}?",
    "Heads up: {T} is {X}, more {W}.",
    "Thanks for the help with {T}!",
    "Running late, start {E} without me.",
    "Honestly {T} was {F}.",
    "Could we {V} {T} {W} instead?",
    "{S} said {T} is {X}.",
)
_SHORT = (
    "ok", "Ok!", "lol", "haha", "👍", "thanks!", "Thank you 🙏", "sounds good", "on my way",
    "brb", "😂😂", "yes", "no", "maybe", "sure", "nice!", "+1", "done", "see you soon",
    "can't wait!", "omw 🚗", "good morning ☀️", "gn", "❤️", "agreed", "np", "wow", "hmm…",
)  # fmt: skip
_POOL_SIZE = 8192


def _sentence(rng: random.Random) -> str:
    choice = rng.choice
    text = choice(_TEMPLATES).format(
        S=choice(_SUBJECTS),
        P=choice(_PAST),
        V=choice(_VERBS),
        T=choice(_THINGS),
        W=choice(_WHEN),
        E=choice(_EVENTS),
        F=choice(_FEELINGS),
        X=choice(_STATES),
    )
    return text[0].upper() + text[1:]


def _body(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.12:
        return rng.choice(_SHORT)
    if r < 0.62:
        n = 1
    elif r < 0.92:
        n = rng.randint(2, 5)
    elif r < 0.99:
        n = rng.randint(6, 25)
    else:
        n = rng.randint(60, 110)
    sentences = [_sentence(rng) for _ in range(n)]
    if n > 6:  # long messages come in paragraphs
        for i in range(4, n, 5):
            sentences[i] += "\n\n"
    text = " ".join(sentences).replace("\n\n ", "\n\n")
    if rng.random() < 0.05:
        text += " " + rng.choice(("😀", "🎉", "🙂", "🔥", "👀", "✅"))
    if len(text) > BODY_MAX:
        text = text[: text.rfind(" ", 0, BODY_MAX)]
    return text


def _group_title(rng: random.Random) -> str:
    title = f"{rng.choice(_TITLE_A)} {rng.choice(_TITLE_B)}"
    if rng.random() < 0.3:
        title += f" {rng.randint(2, 99)}"
    return title[:TITLE_MAX]


def _big_group_title(rng: random.Random, n: int) -> str:
    return f"{_BIG_TITLES[n % len(_BIG_TITLES)]} #{rng.randint(1, 999)}"


def _user_identity(rng: random.Random, user_id: int) -> tuple[str, str, str | None]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    f, la = first.translate(_ASCII).lower(), last.translate(_ASCII).lower()
    style = rng.randrange(4)
    # The id in every username keeps them unique across repeated seeds.
    if style == 0:
        username = f"{f}.{la}.{user_id}"
    elif style == 1:
        username = f"{f}{user_id}"
    elif style == 2:
        username = f"{f[0]}{la}_{user_id}"
    else:
        username = f"{f}-{la}{user_id}"
    username = username[-USERNAME_MAX:]
    email = f"{username}@{rng.choice(_DOMAINS)}"
    display = None if rng.random() < 0.15 else f"{first} {last}"[:DISPLAY_NAME_MAX]
    return username, email, display


# --- binary COPY -------------------------------------------------------------------------

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_NULL = struct.pack(">i", -1)
_INT8 = struct.Struct(">iq")
_LEN = struct.Struct(">i")
_FIELDS = struct.Struct(">h")
_MESSAGE_ROW = struct.Struct(">hiqiqiqiq")  # conversation_id, seq, sender_id, created_at
_MEMBER_ROW = struct.Struct(">hiqiq")  # conversation_id, user_id
_MEMBER_TAIL = struct.Struct(">iqiq")  # last_read_seq, joined_at
_CHUNK_ROWS = 20_000


def _text(value: str) -> bytes:
    data = value.encode()
    return _LEN.pack(len(data)) + data


def _int8(value: int | None) -> bytes:
    return _NULL if value is None else _INT8.pack(8, value)


def _copy_rows(
    cur: psycopg.Cursor[Any],
    table: str,
    columns: Sequence[str],
    chunks: Iterator[tuple[bytes, int]],
    *,
    freeze: bool,
    phase: str,
    total: int,
    progress: ProgressCallback,
) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT binary{})").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", FREEZE") if freeze else sql.SQL(""),
    )
    done = 0
    progress(phase, 0, total)
    with cur.copy(statement) as copy:
        copy.write(_COPY_HEADER)
        for chunk, rows in chunks:
            copy.write(chunk)
            done += rows
            progress(phase, done, total)
        copy.write(_COPY_TRAILER)
    progress(phase, total, total)


def _user_chunks(world: _World, base: int) -> Iterator[tuple[bytes, int]]:
    rng = _rng(world.plan, "names")
    rows: list[bytes] = []
    head = _FIELDS.pack(5)
    for i, created in enumerate(world.user_created):
        user_id = base + 1 + i
        username, email, display = _user_identity(rng, user_id)
        rows.append(
            head
            + _INT8.pack(8, user_id)
            + _text(username)
            + _text(email)
            + (_NULL if display is None else _text(display))
            + _INT8.pack(8, created)
        )
        if len(rows) >= _CHUNK_ROWS:
            yield b"".join(rows), len(rows)
            rows = []
    if rows:
        yield b"".join(rows), len(rows)


def _conversation_chunks(world: _World, base: int, user_base: int) -> Iterator[tuple[bytes, int]]:
    rows: list[bytes] = []
    head = _FIELDS.pack(8)
    direct, group = _text("direct"), _text("group")
    last_wall = world.clock.wall(world.conv_last)
    for c, created in enumerate(world.conv_created):
        n = world.conv_messages[c]
        low = high = None
        if world.conv_direct[c]:
            a, b = world.conv_members[c]
            low, high = user_base + 1 + min(a, b), user_base + 1 + max(a, b)
        title = world.conv_title[c]
        rows.append(
            head
            + _INT8.pack(8, base + 1 + c)
            + (direct if world.conv_direct[c] else group)
            + (_NULL if title is None else _text(title))
            + _int8(low)
            + _int8(high)
            + _INT8.pack(8, n)
            + _INT8.pack(8, last_wall[c] if n else created)
            + _INT8.pack(8, created)
        )
        if len(rows) >= _CHUNK_ROWS:
            yield b"".join(rows), len(rows)
            rows = []
    if rows:
        yield b"".join(rows), len(rows)


def _message_chunks(world: _World, base: int, user_base: int) -> Iterator[tuple[bytes, int]]:
    """Messages in (conversation_id, seq) order, which is also the primary key's order."""
    rng = _rng(world.plan, "messages")
    read_rng = _rng(world.plan, "read")
    body_rng = _rng(world.plan, "bodies")
    pool = [_text(_body(body_rng)) for _ in range(_POOL_SIZE)]
    rnd, choices = rng.random, rng.choices
    pack = _MESSAGE_ROW.pack
    to_wall = world.clock.wall
    weights, until = world.user_weight, world.user_until
    rows: list[bytes] = []
    world.last_read = []
    for c, members in enumerate(world.conv_members):
        n = world.conv_messages[c]
        if n == 0:
            world.last_read.append([0] * len(members))
            continue
        start, last = world.conv_start[c], world.conv_last[c]
        span = last - start - 1
        times = [start + 1 + int(rnd() * span) for _ in range(n - 1)]
        times.sort()
        times.append(last)
        # Who may send: lurkers never; the first member always (so someone can).
        senders_weights = [weights[u] if until[u] >= 0 else 0.0 for u in members]
        senders_weights[0] = max(senders_weights[0], 0.05)
        senders = choices(members, weights=senders_weights, k=n)
        cutoff = min(until[u] for u in members if until[u] >= 0)
        if cutoff < last:
            # A user who left stops sending; the conversation's first member takes over.
            anchor = members[0]
            senders = [anchor if t > until[s] else s for s, t in zip(senders, times, strict=True)]
        wall = to_wall(times)
        created = world.conv_created[c]
        if wall[0] <= created or any(map(ge, wall, islice(wall, 1, None))):
            _strictly_increasing(wall, created)
        # Read markers: a sender has read up to their own last message.
        own_last = {s: seq for seq, s in enumerate(senders, 1)}
        world.last_read.append([_read_marker(read_rng, n, own_last.get(u, 0)) for u in members])
        conv_id = base + 1 + c
        bodies = choices(pool, k=n)
        sender_ids = [user_base + 1 + s for s in senders]
        # Big conversations go out in several chunks, so no single write is huge.
        for begin in range(0, n, _CHUNK_ROWS):
            end = begin + _CHUNK_ROWS
            rows += [
                pack(5, 8, conv_id, 8, seq, 8, sender, 8, t) + body
                for seq, sender, t, body in zip(
                    count(begin + 1),
                    islice(sender_ids, begin, end),
                    islice(wall, begin, end),
                    islice(bodies, begin, end),
                    strict=False,
                )
            ]
            if len(rows) >= _CHUNK_ROWS:
                yield b"".join(rows), len(rows)
                rows = []
    if rows:
        yield b"".join(rows), len(rows)


def _read_marker(rng: random.Random, last_seq: int, own_last: int) -> int:
    r = rng.random()
    if r < 0.72 or own_last == last_seq:
        return last_seq
    if r < 0.93:  # a few unread
        return max(own_last, last_seq - rng.randint(1, 12))
    return own_last + int((last_seq - own_last) * rng.random())  # far behind


def _member_chunks(world: _World, base: int, user_base: int) -> Iterator[tuple[bytes, int]]:
    rows: list[bytes] = []
    owner, member = _text("owner"), _text("member")
    head, tail = _MEMBER_ROW.pack, _MEMBER_TAIL.pack
    for c, members in enumerate(world.conv_members):
        conv_id = base + 1 + c
        owners = world.conv_owners[c]
        joined = world.conv_created[c]
        rows += [
            head(5, 8, conv_id, 8, user_base + 1 + u)
            + (owner if i < owners else member)
            + tail(8, read, 8, joined)
            for i, (u, read) in enumerate(zip(members, world.last_read[c], strict=True))
        ]
        if len(rows) >= _CHUNK_ROWS:
            yield b"".join(rows), len(rows)
            rows = []
    if rows:
        yield b"".join(rows), len(rows)


# --- the load --------------------------------------------------------------------------------

_TABLES = ("users", "conversations", "conversation_members", "messages", "message_activity")
# Only these grow large enough for bulk mode to pay off; the others keep their
# indexes, which also catch username collisions with existing rows at once.
_BULK_TABLES = ("conversation_members", "messages")


@dataclass(slots=True)
class _Rebuild:
    """Keys and indexes dropped for a bulk load, to recreate after it."""

    primary_keys: list[tuple[str, str, str]] = field(default_factory=list)  # table, name, def
    indexes: list[str] = field(default_factory=list)
    foreign_keys: list[tuple[str, str, str]] = field(default_factory=list)


def _load(conn: psycopg.Connection[Any], world: _World, progress: ProgressCallback) -> int:
    plan = world.plan
    with conn.cursor() as cur:
        # One long statement (COPY, CREATE INDEX) may run for minutes at scale.
        cur.execute("SET LOCAL statement_timeout = 0")
        # Binary COPY sends text as is: say it is UTF-8, whatever the database's encoding.
        cur.execute("SET LOCAL client_encoding = 'UTF8'")
        cur.execute(
            "SELECT set_config('maintenance_work_mem', '512MB', true) "
            "FROM pg_settings WHERE name = 'maintenance_work_mem' AND setting::bigint < 524288"
        )
        cur.execute(
            sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                sql.SQL(", ").join(map(sql.Identifier, _TABLES))
            )
        )
        user_base = _next_id_base(cur, "users")
        conv_base = _next_id_base(cur, "conversations")
        bulk = [t for t in _BULK_TABLES if _can_bulk_load(cur, t)]
        rebuild = _drop_for_bulk_load(cur, bulk)
        if bulk:
            # Empty, so nothing is lost; truncating in this transaction is what allows FREEZE.
            cur.execute(
                sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, bulk)))
            )

        _copy_rows(
            cur,
            "users",
            ("id", "username", "email", "display_name", "created_at"),
            _user_chunks(world, user_base),
            freeze=False,
            phase="users",
            total=plan.users,
            progress=progress,
        )
        _copy_rows(
            cur,
            "conversations",
            (
                "id",
                "kind",
                "title",
                "direct_user_low_id",
                "direct_user_high_id",
                "last_seq",
                "last_activity_at",
                "created_at",
            ),
            _conversation_chunks(world, conv_base, user_base),
            freeze=False,
            phase="conversations",
            total=plan.conversations,
            progress=progress,
        )
        # The activity rollup's trigger would aggregate every row of the COPY through
        # a transition table; one GROUP BY after the load does the same for less.
        cur.execute("ALTER TABLE messages DISABLE TRIGGER messages_activity_insert")
        _copy_rows(
            cur,
            "messages",
            ("conversation_id", "seq", "sender_id", "created_at", "body"),
            _message_chunks(world, conv_base, user_base),
            # PostgreSQL cannot COPY FREEZE into a partitioned table (migration 0007).
            freeze="messages" in bulk and not _is_partitioned(cur, "messages"),
            phase="messages",
            total=plan.messages,
            progress=progress,
        )
        _copy_rows(
            cur,
            "conversation_members",
            ("conversation_id", "user_id", "role", "last_read_seq", "joined_at"),
            _member_chunks(world, conv_base, user_base),
            freeze="conversation_members" in bulk,
            phase="members",
            total=world.member_count,
            progress=progress,
        )
        _recreate(cur, rebuild, progress)
        cur.execute("ALTER TABLE messages ENABLE TRIGGER messages_activity_insert")
        if plan.messages:
            progress("activity", 0, 1)
            # The seed's messages are exactly those of its new conversations.
            cur.execute(_ACTIVITY_BACKFILL, (conv_base,))
            progress("activity", 1, 1)
        for table, n, base in (
            ("users", plan.users, user_base),
            ("conversations", plan.conversations, conv_base),
        ):
            if n:
                cur.execute(
                    "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", (table, base + n)
                )
    return world.member_count


_ACTIVITY_BACKFILL = """
INSERT INTO message_activity AS a (hour, sender_id, conversation_id, message_count)
SELECT date_trunc('hour', created_at, 'UTC'), sender_id, conversation_id, count(*)
  FROM messages WHERE conversation_id > %s
 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
ON CONFLICT (hour, sender_id, conversation_id)
DO UPDATE SET message_count = a.message_count + EXCLUDED.message_count
"""


def _next_id_base(cur: psycopg.Cursor[Any], table: str) -> int:
    """The highest id in use or handed out; the seed's ids start just above it."""
    row = cur.execute(
        sql.SQL(
            "SELECT GREATEST((SELECT max(id) FROM {}), "
            "pg_sequence_last_value(pg_get_serial_sequence(%s, 'id')::regclass), 0)"
        ).format(sql.Identifier(table)),
        (table,),
    ).fetchone()
    return int(row[0]) if row else 0


def _can_bulk_load(cur: psycopg.Cursor[Any], table: str) -> bool:
    """Empty (so truncating loses nothing), and so is every other table whose
    foreign keys point at it (reactions, mentions): those keys can go and come back."""
    if cur.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(sql.Identifier(table))).fetchone():
        return False
    for (referencing,) in _referencing_keys(cur, table, "conrelid::regclass::text"):
        if cur.execute(
            sql.SQL("SELECT 1 FROM {} LIMIT 1").format(sql.Identifier(referencing))
        ).fetchone():
            return False
    return True


def _referencing_keys(cur: psycopg.Cursor[Any], table: str, columns: str) -> list[tuple[Any, ...]]:
    """Other tables' foreign keys to `table` (on a partitioned table, the parent
    constraint only: its per-partition clones go and come back with it)."""
    return cur.execute(
        sql.SQL(
            "SELECT DISTINCT {} FROM pg_constraint WHERE contype = 'f' "
            "AND confrelid = %s::regclass AND conrelid <> confrelid AND conparentid = 0 "
            "ORDER BY 1"
        ).format(sql.SQL(columns)),
        (table,),
    ).fetchall()


def _drop_for_bulk_load(cur: psycopg.Cursor[Any], tables: list[str]) -> _Rebuild:
    rebuild = _Rebuild()
    for table in tables:
        # Other (empty) tables' foreign keys to it, its own foreign keys, then its
        # primary key, then the indexes that back no constraint.
        for referencing, name, definition in _referencing_keys(
            cur, table, "conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
        ):
            rebuild.foreign_keys.append((referencing, name, definition))
            cur.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(referencing), sql.Identifier(name)
                )
            )
        for kind, name, definition in cur.execute(
            "SELECT contype, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype IN ('f', 'p') AND conparentid = 0 "
            "ORDER BY contype, conname",
            (table,),
        ).fetchall():
            target = rebuild.foreign_keys if kind == "f" else rebuild.primary_keys
            target.append((table, name, definition))
            cur.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(table), sql.Identifier(name)
                )
            )
        # Indexes that back no constraint (primary key, unique, or a foreign key
        # elsewhere that references them): those can go and come back unnoticed.
        for schema, name, definition in cur.execute(
            "SELECT n.nspname, c.relname, pg_get_indexdef(i.indexrelid) "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE i.indrelid = %s::regclass "
            "AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = i.indexrelid) "
            "ORDER BY c.relname",
            (table,),
        ).fetchall():
            # A partitioned table's index reads "ON ONLY t", which would build the
            # parent's index alone, invalid; without ONLY it covers every partition.
            rebuild.indexes.append(definition.replace(" ON ONLY ", " ON ", 1))
            cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)))
    return rebuild


def _recreate(cur: psycopg.Cursor[Any], rebuild: _Rebuild, progress: ProgressCallback) -> None:
    steps = len(rebuild.primary_keys) + len(rebuild.indexes) + len(rebuild.foreign_keys)
    if not steps:
        return
    progress("indexes", 0, steps)
    # Definitions come from the server's own catalog (pg_get_indexdef and
    # pg_get_constraintdef), not from input, so running them as SQL is safe.
    statements: list[sql.SQL | sql.Composed] = [
        _add_constraint(*key) for key in rebuild.primary_keys
    ]
    statements += [sql.SQL(definition) for definition in rebuild.indexes]
    statements += [_add_constraint(*key) for key in rebuild.foreign_keys]
    for done, statement in enumerate(statements, 1):
        cur.execute(statement)
        progress("indexes", done, steps)


def _add_constraint(table: str, name: str, definition: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(
        sql.Identifier(table), sql.Identifier(name)
    ) + sql.SQL(definition)


def _is_partitioned(cur: psycopg.Cursor[Any], table: str) -> bool:
    row = cur.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass", (table,)).fetchone()
    return bool(row and row[0] == "p")


def _analyze(conn: psycopg.Connection[Any], progress: ProgressCallback) -> None:
    """Fresh statistics, so the planner knows the new sizes and skew at once.

    A partitioned messages table was loaded without FREEZE: VACUUM it too, so
    that its visibility map lets index-only scans skip the heap at once.
    """
    progress("analyze", 0, len(_TABLES))
    with conn.cursor() as cur:
        cur.execute("SET statement_timeout = 0")
        vacuum = [t for t in _TABLES if _is_partitioned(cur, t)]
        conn.commit()
        conn.autocommit = True  # VACUUM cannot run inside a transaction
        try:
            for done, table in enumerate(_TABLES, 1):
                command = "VACUUM (ANALYZE) {}" if table in vacuum else "ANALYZE {}"
                cur.execute(sql.SQL(command).format(sql.Identifier(table)))
                progress("analyze", done, len(_TABLES))
        finally:
            conn.autocommit = False
            cur.execute("RESET statement_timeout")
    conn.commit()
