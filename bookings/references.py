"""Booking references: the 6 characters a person reads out over the phone, like a PNR.

A reference is the booking's id, scrambled by a fixed permutation of the 30-bit numbers and
written in 6 characters of an alphabet without look-alikes (no 0/O, 1/I/L). As 32**6 == 2**30,
every id below 2**30 has exactly one reference and every reference one id: they are unique by
construction, need no column, no index, no retry on a collision, and `?reference=` is a look-up
by primary key. The permutation (a 4-round Feistel network, its keys fixed here and not secret)
only keeps neighbouring bookings from having neighbouring references; a reference is no
credential, since a booking is only ever shown to its owner and staff.
"""

from __future__ import annotations

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
LENGTH = 6
_BITS = 5 * LENGTH  # 32 == 2**5 letters.
_HALF = _BITS // 2
_MASK = (1 << _HALF) - 1
_ROUND_KEYS = (0x2F1B, 0x51C3, 0x1A7D, 0x6E29)
# Ids from here on would need a 7th character (a billion bookings from now).
MAX_ID = (1 << _BITS) - 1


def _round(half: int, key: int) -> int:
    return ((half * 0x9E37 + key) ^ (half >> 5)) & _MASK


def _permute(number: int, keys: tuple[int, ...]) -> int:
    left, right = number >> _HALF, number & _MASK
    for key in keys:
        left, right = right, left ^ _round(right, key)
    return (left << _HALF) | right


def _unpermute(number: int, keys: tuple[int, ...]) -> int:
    left, right = number >> _HALF, number & _MASK
    for key in reversed(keys):
        left, right = right ^ _round(left, key), left
    return (left << _HALF) | right


def reference_of(booking_id: int | None) -> str:
    """The booking's reference ("" before it has an id)."""
    if booking_id is None:
        return ""
    if not 0 < booking_id <= MAX_ID:
        raise ValueError(f"Booking id {booking_id} has no 6-character reference.")
    number = _permute(booking_id, _ROUND_KEYS)
    return "".join(ALPHABET[(number >> (5 * place)) & 31] for place in reversed(range(LENGTH)))


def booking_id_of(reference: str) -> int | None:
    """The id a reference stands for (case-insensitive), None if it is not one."""
    reference = reference.upper()
    if len(reference) != LENGTH or any(char not in ALPHABET for char in reference):
        return None
    number = 0
    for char in reference:
        number = (number << 5) | ALPHABET.index(char)
    booking_id = _unpermute(number, _ROUND_KEYS)
    return booking_id or None
