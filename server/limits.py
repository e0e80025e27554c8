"""What one request may ask for, and how an error shows what the caller sent.

Every length a caller controls is bounded before any work is done, so no request can make the
server hold, scan or echo an unbounded amount of data:

* a model name is at most 128 characters (the repository's own limit, so a longer one cannot name a
  model); a user or item id, and a user feature's name or value, at most ``max_id_chars`` (256);
* ``history``, ``exclude_item_ids`` and ``user_features`` hold at most ``max_list_items`` (10,000)
  entries each (RecommendBatch entries and Score candidates have ``max_request_items``, 1,024);
* an answer must fit in ``max_message_bytes``: a RecommendBatch whose answer is estimated (users x k x
  the model's mean encoded item size) to be larger is refused before the model runs, with
  RESOURCE_EXHAUSTED and what to lower; one that turns out larger once built is refused the same way
  rather than failing in gRPC after the fact;
* an error message quotes at most :data:`SHOWN_CHARS` characters of any value it echoes;
* a ``request_time`` is unix seconds from 0 (the server's clock) to :data:`MAX_REQUEST_TIME`.

Breaking a limit is INVALID_ARGUMENT (RESOURCE_EXHAUSTED for the answer size), with a message that
names the field, the limit and the length sent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from onnxrec.errors import ConfigError

SHOWN_CHARS = 64  # most characters of a caller's value an error message quotes
MAX_NAME_CHARS = 128  # the repository's limit on model names (exporter.repository.check_model_name)
RESPONSE_OVERHEAD_BYTES = 24  # a RecommendResponse's fields besides its items, and its framing in a batch
MAX_REQUEST_TIME = 32_503_680_000  # 3000-01-01 in unix seconds: a larger request_time is likely milliseconds
MAX_REASONS = 3  # most reasons an explained item carries (server/explain.py), counted by the answer-size estimate


class RequestError(Exception):
    """A request a caller must change: carries the gRPC status code and an actionable message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def invalid(message: str) -> RequestError:
    """An INVALID_ARGUMENT :class:`RequestError`."""
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def shown(value: str) -> str:
    """``value`` quoted for an error message: its repr, cut to :data:`SHOWN_CHARS` characters with
    ``...`` and its length when longer."""
    if len(value) <= SHOWN_CHARS:
        return repr(value)
    return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"


@dataclass(frozen=True)
class RequestLimits:
    """The per-request bounds (see the module docstring)."""

    max_id_chars: int = 256
    max_list_items: int = 10_000
    max_message_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_id_chars < 1:
            raise ConfigError(f"max_id_chars must be at least 1, not {self.max_id_chars}")
        if self.max_list_items < 1:
            raise ConfigError(f"max_list_items must be at least 1, not {self.max_list_items}")

    def check_name(self, name: str) -> None:
        """A model name: not empty, at most :data:`MAX_NAME_CHARS` characters."""
        if not name:
            raise invalid("model.name is empty")
        if len(name) > MAX_NAME_CHARS:
            raise invalid(f"model.name is {len(name)} characters long; model names have at most {MAX_NAME_CHARS}")

    def check_id(self, value: str, what: str) -> None:
        """One id (``what`` names the field): not empty, at most ``max_id_chars`` characters."""
        if not value:
            raise invalid(f"{what} is empty")
        if len(value) > self.max_id_chars:
            raise invalid(f"{what} is {len(value)} characters long; ids have at most {self.max_id_chars}")

    def check_ids(self, values: Sequence[str], what: str) -> None:
        """A list of ids: at most ``max_list_items`` entries of at most ``max_id_chars`` characters."""
        if len(values) > self.max_list_items:
            raise invalid(f"{what} holds {len(values)} entries; at most {self.max_list_items} are accepted")
        if values and max(map(len, values)) > self.max_id_chars:
            j = next(j for j, v in enumerate(values) if len(v) > self.max_id_chars)
            raise invalid(f"{what}[{j}] is {len(values[j])} characters long; ids have at most {self.max_id_chars}")

    def check_features(self, features: dict[str, str]) -> None:
        """``user_features``: at most ``max_list_items`` entries, names and values at most ``max_id_chars``."""
        if len(features) > self.max_list_items:
            raise invalid(f"user_features holds {len(features)} entries; at most {self.max_list_items} are accepted")
        for name, value in features.items():
            if len(name) > self.max_id_chars or len(value) > self.max_id_chars:
                raise invalid(
                    f"user_features[{shown(name)}]: names and values have at most {self.max_id_chars} characters"
                )

    def check_answer_size(self, estimate: float, rows: int, k: int, metadata: bool) -> None:
        """Refuse an answer estimated at ``estimate`` bytes (``rows`` users, largest ``k``) when it
        cannot fit in ``max_message_bytes``; the message says what to lower."""
        limit = self.max_message_bytes
        if estimate <= limit:
            return
        fit = max(1, int(rows * limit / estimate))
        lower = "fewer users per call" + (f" (about {fit} fit at k={k})" if fit < rows else "") + ", a smaller k"
        if metadata:
            lower += ", or include_metadata=false"
        raise RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the answer would be about {_mb(estimate)}, over the server's {_mb(limit)} message limit "
            f"(max_message_bytes): ask for {lower}",
        )


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def _field_len(payload: int) -> int:
    """Bytes of a length-delimited field (tag, length, payload) with a one-byte tag."""
    return 1 + _varint_len(payload) + payload


def scored_item_bytes(item_id: str, metadata: dict[str, str]) -> tuple[int, int]:
    """Encoded bytes one ``ScoredItem`` adds to a response's repeated ``items``, without and with its
    metadata (the protobuf wire format: tag, length and payload of each field; a 5-byte score)."""
    plain = _field_len(len(item_id.encode())) + 5
    meta = plain
    for key, value in metadata.items():
        meta += _field_len(_field_len(len(key.encode())) + _field_len(len(value.encode())))
    return _field_len(plain), _field_len(meta)


def request_time(value: int) -> int:
    """A request's ``request_time`` in unix seconds, the server's clock for 0; INVALID_ARGUMENT when it is
    negative or past :data:`MAX_REQUEST_TIME`."""
    if value == 0:
        return int(time.time())
    if 0 < value <= MAX_REQUEST_TIME:
        return value
    hint = " (milliseconds? it takes seconds)" if value > MAX_REQUEST_TIME else ""
    raise invalid(f"request_time must be unix seconds from 1 to {MAX_REQUEST_TIME}, or 0 for now; got {value}{hint}")
