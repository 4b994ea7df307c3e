"""Idempotency-Key handling (docs/api.md#idempotency, after the IETF httpapi draft and Stripe).

A request claims its (user, key) by inserting a row: the unique constraint decides a race,
never a read-then-write. The claimant runs the operation and stores its final answer on
the key; a later request with the same key and body gets that answer replayed. The
operation may store it itself, inside the transaction that makes its outcome final
(`Claim.store`), so that outcome and answer commit together; otherwise it is stored after.
Answers that invite a retry (409 in progress, 429, 503) and unexpected failures store
nothing: the key is let go, so that the client's retry runs again.

A request that dies holding a key keeps it until its lease runs out (the payment attempt
window); then a retry with the same key and body takes it over. Taking over is safe
because the payment it finds is resumed with the same gateway idempotency key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, IntegrityError
from django.utils import timezone

from bookings_project import metrics, statements
from bookings_project.db import may_conflict
from bookings_project.errors import problem_body
from bookings_project.exceptions import DomainError, IdempotencyKeyInUse, IdempotencyKeyReused, ServiceUnavailable
from payments.models import IdempotencyKey
from payments.selectors import (
    expired_idempotency_keys,
    idempotency_key_of,
    payment_attempt_window,
    payment_request_duration,
)

logger = logging.getLogger(__name__)

MAX_KEY_LENGTH = 255
# Printable ASCII, no space at either end (a header value would lose it): what a client can
# send unchanged through any HTTP stack.
KEY_PATTERN = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    replayed: bool = False


class Claim:
    """This request's hold on its key, handed to the operation `run_idempotently` runs."""

    def __init__(self, row: IdempotencyKey) -> None:
        self._row = row
        # The answer `store` wrote, once the operation has stored it.
        self.answer: Answer | None = None

    def store(self, status: int, body: dict[str, Any]) -> None:
        """Store the final answer now, inside the transaction that makes the operation's outcome
        final: they commit together, and no crash between two commits can leave the outcome
        written and the key still claimed (a retry would wait for its lease to run out)."""
        _complete(self._row, status, body)
        self.answer = Answer(status=status, body=body)

    def store_refusal(self, error: DomainError) -> None:
        """`store` of a final refusal: its problem body, as the exception handler renders it."""
        self.store(error.status, _problem_of(error))


def request_fingerprint(*, method: str, path: str, body: dict[str, Any]) -> str:
    """SHA-256 of method, path and the normalised JSON body (keys sorted, no spaces)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(f"{method.upper()}\n{path}\n{canonical}".encode()).hexdigest()


def run_idempotently(
    *, user: AbstractBaseUser, key: str, fingerprint: str, operation: Callable[[Claim], tuple[int, dict[str, Any]]]
) -> Answer:
    """Run `operation` at most once per (user, key) and answer as the first run did.

    `operation(claim)` answers `(status, body)` or raises, and may store its answer itself
    (`Claim.store`). A `DomainError` that is final (a decline, an amount mismatch, ...) is
    stored as its problem body, then re-raised for the handler.
    """
    row = _claim(user=user, key=key, fingerprint=fingerprint)
    if isinstance(row, Answer):
        return row
    claim = Claim(row)
    try:
        status, body = operation(claim)
    except DomainError as error:
        if error.invites_retry:
            _let_go_or_say_when(row, error)
        elif claim.answer is None:
            _complete(row, error.status, _problem_of(error))
        raise
    except BaseException as error:
        _let_go_or_say_when(row, error)
        raise
    if claim.answer is None:
        _complete(row, status, body)
    return Answer(status=status, body=body)


def _problem_of(error: DomainError) -> dict[str, Any]:
    return problem_body(status=error.status, code=error.code, title=error.title, detail=error.detail)


def _claim(*, user: AbstractBaseUser, key: str, fingerprint: str) -> IdempotencyKey | Answer:
    for _ in range(3):
        now = timezone.now()
        try:
            with may_conflict():
                return statements.insert(
                    IdempotencyKey(
                        user=user,
                        key=key,
                        fingerprint=fingerprint,
                        lease=uuid.uuid4(),
                        locked_until=now + payment_attempt_window(),
                        expires_at=now + dt.timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS),
                    )
                )
        except IntegrityError:
            pass  # The key exists: see what it says.
        row = idempotency_key_of(user=user, key=key)
        if row is None:
            continue  # Let go meanwhile: claim it again.
        if row.expires_at <= now:
            # Past its TTL and not yet purged: as good as unused.
            IdempotencyKey.objects.filter(pk=row.pk, expires_at__lte=now).delete()
            continue
        if row.fingerprint != fingerprint:
            raise IdempotencyKeyReused()
        if row.state == IdempotencyKey.State.COMPLETED:
            metrics.IDEMPOTENT_REPLAYS.inc()
            return Answer(status=row.response_status, body=row.response_body, replayed=True)
        if row.locked_until and row.locked_until > now:
            raise IdempotencyKeyInUse(retry_after=_in_use_retry_after(row, now))
        # The request that held it died: take the key over, if nobody else just did.
        lease = uuid.uuid4()
        taken = IdempotencyKey.objects.filter(pk=row.pk, state=row.state, lease=row.lease).update(
            lease=lease, locked_until=now + payment_attempt_window()
        )
        if taken:
            logger.warning("idempotency key %s of user %s taken over from a request that died", row.pk, user.pk)
            row.lease, row.locked_until = lease, now + payment_attempt_window()
            return row
        raise IdempotencyKeyInUse()
    raise IdempotencyKeyInUse()


def _complete(claim: IdempotencyKey, status: int, body: dict[str, Any]) -> None:
    statements.update(
        IdempotencyKey,
        where={"pk": claim.pk, "lease": claim.lease},
        values={
            "state": IdempotencyKey.State.COMPLETED,
            "response_status": status,
            "response_body": body,
            "lease": None,
            "locked_until": None,
            "completed_at": timezone.now(),
        },
    )


def _in_use_retry_after(row: IdempotencyKey, now: dt.datetime) -> int:
    """Seconds until a retry can have the key's answer: 1 while the request holding it may
    still be running (it answers within seconds); once that request must have ended (it died,
    or the database failed under it), when its lease runs out and a retry takes the key over."""
    claimed_at = row.locked_until - payment_attempt_window()
    if now < claimed_at + payment_request_duration():
        return 1
    return _seconds_until(row.locked_until)


def _seconds_until(moment: dt.datetime) -> int:
    return max(1, math.ceil((moment - timezone.now()).total_seconds()))


def _let_go_or_say_when(claim: IdempotencyKey, error: BaseException) -> None:
    """Let the key go for the client's retry; if the database fails that too, the key stays
    claimed until its lease runs out, and the client is told when that is."""
    try:
        _let_go(claim)
    except DatabaseError as failure:
        retry_after = _seconds_until(claim.locked_until)
        logger.error(
            "idempotency key %s: could not be let go (%s); claimed for %s s more", claim.pk, failure, retry_after
        )
        raise ServiceUnavailable(
            f"The database failed while this request was under way. Retry with the same Idempotency-Key in "
            f"{retry_after} s: it then takes the request over, and a payment is charged at most once.",
            retry_after=retry_after,
        ) from error


def _let_go(claim: IdempotencyKey) -> None:
    IdempotencyKey.objects.filter(pk=claim.pk, lease=claim.lease, state=IdempotencyKey.State.IN_PROGRESS).delete()


def idempotency_keys_purge(*, now: dt.datetime, batch_size: int) -> int:
    """Delete the keys past their TTL, a batch per statement. Answers how many this call
    deleted (several hosts may purge at once: each key is counted by one)."""
    purged = 0
    while True:
        batch = list(expired_idempotency_keys(now=now).order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not batch:
            return purged
        purged += expired_idempotency_keys(now=now).filter(pk__in=batch).delete()[0]
