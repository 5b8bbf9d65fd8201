"""Resource ids: a type prefix and 26 characters that sort by creation time.

48 bits of milliseconds then 80 random bits, in Crockford base32. Within one
millisecond, ids made by this process keep increasing (the random part is
incremented, as monotonic ULIDs do), so listings ordered by id keep the order
in which things were created here.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_RANDOM_MAX = (1 << 80) - 1
_lock = threading.Lock()
_last = (0, 0)


def new_id(prefix: str) -> str:
    """Return e.g. ``exe_01jd3k...``, greater than every id this process made before."""
    global _last
    now = int(time.time() * 1000)
    with _lock:
        last_ms, last_random = _last
        if now <= last_ms and last_random < _RANDOM_MAX:
            now, random_part = last_ms, last_random + 1
        else:
            random_part = int.from_bytes(os.urandom(10), "big") >> 1  # room to increment
        _last = (now, random_part)
    value = (now << 80) | random_part
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"
