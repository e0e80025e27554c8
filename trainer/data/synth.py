"""A synthetic interaction log with realistic skew, for tests, demos and benchmarks (write it
with :func:`~onnxrec.trainer.data.log.write_log`).

The generator is vectorised with numpy and deterministic for a seed. Its log has:

* power-law (Zipf-like) item popularity;
* latent taste clusters: each item belongs to one cluster (its "genre"), each user draws mostly
  from a main and a secondary cluster, with some exploration of the whole catalogue;
* heavy-tailed (log-normal) interaction counts per user, at least 5 (or the catalogue size);
* per-user timestamps that increase over about 180 days, grouped in sessions;
* ratings 1-5 that are higher where the item matches the user's taste;
* no duplicate (user, item) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onnxrec.errors import DataError
from onnxrec.trainer.data.log import INTERACTION_SCHEMA, InteractionLog

_GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_SEGMENTS = ("casual", "binge", "critic", "family", "explorer", "collector", "night-owl", "student")
_AGE_GROUPS = ("under-18", "18-24", "25-34", "35-44", "45-54", "55+")
_AGE_PROBS = (0.06, 0.22, 0.32, 0.2, 0.12, 0.08)

_MIN_PER_USER = 5
_WINDOW_S = 180 * 86_400  # the span of the whole log
_ZIPF_EXPONENT = 1.2
_P_MAIN = 0.65  # share of a user's draws from the main cluster
_P_SECOND = 0.2  # from the secondary cluster; the rest explores the whole catalogue
_SESSION_LEN = 6.0  # mean interactions per session
_IN_SESSION_GAP_S = 150.0  # mean seconds between interactions within a session
_SEGMENT_MATCH = 0.8  # probability that a user's segment follows their main cluster


def _check_args(num_users: int, num_items: int, interactions_per_user: float, num_clusters: int) -> None:
    if int(num_users) != num_users or num_users < 1:
        raise DataError(f"num_users must be a positive integer, got {num_users!r}")
    if int(num_items) != num_items or num_items < 1:
        raise DataError(f"num_items must be a positive integer, got {num_items!r}")
    if int(num_clusters) != num_clusters or num_clusters < 1:
        raise DataError(f"num_clusters must be a positive integer, got {num_clusters!r}")
    if not np.isfinite(interactions_per_user) or interactions_per_user <= 0:
        raise DataError(f"interactions_per_user must be a positive number, got {interactions_per_user!r}")


def _group_starts(counts: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


@dataclass(frozen=True)
class _Items:
    """The catalogue: each item's popularity (Zipf-like over a random ranking), taste cluster and quality."""

    popularity: np.ndarray
    cluster: np.ndarray
    quality: np.ndarray


@dataclass(frozen=True)
class _Users:
    """Each user's main and secondary taste cluster and rating bias."""

    main: np.ndarray
    second: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True)
class _Tastes:
    """What item draws need: popularity, the items grouped by cluster and each user's clusters.

    Items are laid out grouped by cluster (``order``); ``cum`` is the cumulative popularity over that
    layout and ``[cluster_lo[c], cluster_hi[c])`` the popularity mass of cluster ``c``; the extra
    last cluster is the whole catalogue. ``user_clusters[u]`` is (main, secondary, whole catalogue).
    """

    popularity: np.ndarray
    order: np.ndarray
    cum: np.ndarray
    cluster_lo: np.ndarray
    cluster_hi: np.ndarray
    user_clusters: np.ndarray


def _draw_items(rng: np.random.Generator, num_items: int, num_clusters: int) -> _Items:
    """Popularity over a random ranking, a cluster each (cluster sizes vary) and a quality."""
    rank = rng.permutation(num_items)
    popularity = 1.0 / np.power(rank + 1.0, _ZIPF_EXPONENT)
    cluster_share = rng.dirichlet(np.full(num_clusters, 3.0))
    cluster = rng.choice(num_clusters, size=num_items, p=cluster_share)
    return _Items(popularity, cluster, rng.normal(0.0, 1.0, num_items))


def _draw_tastes(rng: np.random.Generator, items: _Items, num_clusters: int, num_users: int) -> tuple[_Users, _Tastes]:
    """Lay the catalogue out by cluster (the extra last "cluster" is the whole catalogue) and draw each
    user's main and secondary cluster (non-empty ones, chosen by popularity mass) and rating bias."""
    order = np.argsort(items.cluster, kind="stable")
    cum = np.cumsum(items.popularity[order])
    per_cluster = np.bincount(items.cluster, minlength=num_clusters)
    bounds = np.concatenate([[0.0], cum])
    first = _group_starts(per_cluster)
    cluster_lo = np.append(bounds[first], 0.0)
    cluster_hi = np.append(bounds[first + per_cluster], cum[-1])
    cluster_mass = cluster_hi[:num_clusters] - cluster_lo[:num_clusters]

    mass_p = cluster_mass / cluster_mass.sum()
    main = rng.choice(num_clusters, size=num_users, p=mass_p)
    second = rng.choice(num_clusters, size=num_users, p=mass_p)
    users = _Users(main, second, rng.normal(0.0, 1.0, num_users))
    user_clusters = np.stack([main, second, np.full(num_users, num_clusters)], axis=1)
    return users, _Tastes(items.popularity, order, cum, cluster_lo, cluster_hi, user_clusters)


def _interaction_counts(
    rng: np.random.Generator, num_users: int, num_items: int, interactions_per_user: float
) -> np.ndarray:
    """Interactions per user: heavy-tailed (log-normal), at least min(5, num_items), at most half the
    catalogue where that is more."""
    floor = min(_MIN_PER_USER, num_items)
    extra_mean = max(interactions_per_user - floor, 0.0)
    if extra_mean > 0:
        sigma = 1.0
        extra = rng.lognormal(np.log(extra_mean) - sigma**2 / 2, sigma, num_users)
    else:
        extra = np.zeros(num_users)
    most = max(floor, num_items // 2)  # like MovieLens, no user rates more than half the catalogue
    return np.minimum(floor + np.round(extra).astype(np.int64), most)


def _sample_items(rng: np.random.Generator, users: np.ndarray, tastes: _Tastes) -> np.ndarray:
    """Draw one item per entry of ``users`` (with replacement) from the user's taste mixture."""
    u = rng.random(len(users))
    src = (u >= _P_MAIN).astype(np.int64) + (u >= _P_MAIN + _P_SECOND)
    cluster = tastes.user_clusters[users, src]
    lo = tastes.cluster_lo[cluster]
    hi = tastes.cluster_hi[cluster]
    point = lo + rng.random(len(users)) * (hi - lo)
    pos = np.searchsorted(tastes.cum, point, side="right")
    np.minimum(pos, len(tastes.order) - 1, out=pos)
    return tastes.order[pos]


def _select_distinct(rng: np.random.Generator, counts: np.ndarray, tastes: _Tastes) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``counts[u]`` distinct items for each user ``u``; return (users, items) grouped by user.

    Draws with replacement and keeps first occurrences (which is sampling without replacement in
    draw order), in rounds over the users still short of items with more draws each round; the few
    users still short after that get the rest by Gumbel top-k over the catalogue, weighted by
    popularity.
    """
    num_users = len(counts)
    num_items = len(tastes.popularity)
    done_users: list[np.ndarray] = []
    done_items: list[np.ndarray] = []
    # Pairs accepted so far for the users still short, grouped by user.
    acc_users = np.empty(0, dtype=np.int64)
    acc_items = np.empty(0, dtype=np.int64)
    have = np.zeros(num_users, dtype=np.int64)
    short = np.arange(num_users)
    for factor in (1.4, 3.0, 6.0, 12.0):
        need = counts[short] - have[short]
        draws = np.ceil(need * factor).astype(np.int64) + 4
        cand_users = np.repeat(short, draws)
        cand_items = _sample_items(rng, cand_users, tastes)
        all_users = np.concatenate([acc_users, cand_users])
        all_items = np.concatenate([acc_items, cand_items])
        _, first = np.unique(all_users * num_items + all_items, return_index=True)
        first.sort()  # back to draw order: accepted pairs first, then new draws (each grouped by user)
        kept_users = all_users[first]
        kept_items = all_items[first]
        if len(acc_users):
            by_user = np.argsort(kept_users, kind="stable")
            kept_users = kept_users[by_user]
            kept_items = kept_items[by_user]
        per_user = np.bincount(kept_users, minlength=num_users)
        rank = np.arange(len(kept_users)) - np.repeat(_group_starts(per_user), per_user)
        keep = rank < counts[kept_users]
        kept_users = kept_users[keep]
        kept_items = kept_items[keep]
        have[short] = np.bincount(kept_users, minlength=num_users)[short]
        full = have[kept_users] >= counts[kept_users]
        done_users.append(kept_users[full])
        done_items.append(kept_items[full])
        acc_users = kept_users[~full]
        acc_items = kept_items[~full]
        short = np.flatnonzero(have < counts)
        if len(short) == 0:
            break

    if len(short):
        log_pop = np.log(tastes.popularity)
        starts = _group_starts(np.bincount(acc_users, minlength=num_users))
        chunk = max(1, 2_000_000 // num_items)
        for begin in range(0, len(short), chunk):
            rows = short[begin : begin + chunk]
            scores = log_pop[None, :] + rng.gumbel(size=(len(rows), num_items))
            missing = counts[rows] - have[rows]
            row_of = np.repeat(np.arange(len(rows)), have[rows])
            taken = acc_items[np.concatenate([np.arange(starts[u], starts[u] + have[u]) for u in rows])]
            scores[row_of, taken] = -np.inf
            top = int(missing.max())
            best = np.argpartition(-scores, top - 1, axis=1)[:, :top] if top < num_items else None
            if best is None:
                best = np.broadcast_to(np.arange(num_items), scores.shape)
            best_scores = np.take_along_axis(scores, best, axis=1)
            ranked = np.take_along_axis(best, np.argsort(-best_scores, axis=1, kind="stable"), axis=1)
            pick = np.arange(top)[None, :] < missing[:, None]
            done_users.append(np.broadcast_to(rows[:, None], ranked.shape)[pick])
            done_items.append(ranked[pick].astype(np.int64))
        done_users.append(acc_users)
        done_items.append(acc_items)
    all_users = np.concatenate(done_users)
    all_items = np.concatenate(done_items)
    by_user = np.argsort(all_users, kind="stable")
    return all_users[by_user], all_items[by_user]


def _timestamps(rng: np.random.Generator, users: np.ndarray, counts: np.ndarray, start_time: int) -> np.ndarray:
    """Increasing timestamps per user (``users`` grouped by user), in sessions, within 180 days."""
    num_users = len(counts)
    total = len(users)
    span = np.minimum(_WINDOW_S, rng.uniform(7, 180, num_users) * 86_400 * np.sqrt(counts / counts.mean()))
    span = np.clip(span, 86_400, _WINDOW_S)
    offset = rng.uniform(0.0, 1.0, num_users) * (_WINDOW_S - span)
    sessions = np.maximum(1.0, counts / _SESSION_LEN)
    between = span / sessions  # mean gap between sessions
    new_session = rng.random(total) < (1.0 / _SESSION_LEN)
    gaps = np.where(
        new_session,
        rng.exponential(1.0, total) * between[users],
        1.0 + rng.exponential(_IN_SESSION_GAP_S, total),
    )
    starts = _group_starts(counts)
    gaps[starts[counts > 0]] = 0.0  # each user's first interaction opens their span
    cum = np.cumsum(gaps)
    cum -= np.repeat(cum[starts] - gaps[starts], counts)
    last = np.zeros(num_users)
    nonempty = counts > 0
    last[nonempty] = cum[starts[nonempty] + counts[nonempty] - 1]
    scale = np.where(last > span, span / np.maximum(last, 1.0), 1.0)
    seconds = offset[users] + cum * scale[users]
    return start_time + np.floor(np.clip(seconds, 0, _WINDOW_S)).astype(np.int64)


def _ratings(
    rng: np.random.Generator, items: _Items, users: _Users, user_idx: np.ndarray, item_idx: np.ndarray
) -> np.ndarray:
    """Ratings 1-5 of the pairs ``(user_idx, item_idx)``: higher for a taste match and for better items."""
    cluster = items.cluster[item_idx]
    affinity = np.where(cluster == users.main[user_idx], 1.0, np.where(cluster == users.second[user_idx], 0.6, 0.0))
    noise = rng.normal(0.0, 0.7, len(user_idx))
    score = 2.75 + 1.3 * affinity + 0.45 * items.quality[item_idx] + 0.35 * users.bias[user_idx] + noise
    return np.clip(np.rint(score), 1.0, 5.0)


def _user_table(rng: np.random.Generator, user_ids: pa.Array, users: _Users) -> pa.Table:
    """User side information: a segment that mostly follows the main cluster, and an age group."""
    segments = np.array(_SEGMENTS)
    segment_idx = np.where(
        rng.random(len(user_ids)) < _SEGMENT_MATCH,
        users.main % len(_SEGMENTS),
        rng.integers(0, len(_SEGMENTS), len(user_ids)),
    )
    ages = np.array(_AGE_GROUPS)[rng.choice(len(_AGE_GROUPS), size=len(user_ids), p=_AGE_PROBS)]
    return pa.table(
        {
            "user_id": user_ids,
            "age_group": pa.array(ages.tolist(), type=pa.string()),
            "segment": pa.array(segments[segment_idx].tolist(), type=pa.string()),
        }
    )


def _item_table(rng: np.random.Generator, item_ids: pa.Array, items: _Items) -> pa.Table:
    """Item side information: the cluster's genre, sometimes a second one; a release year; a title."""
    num_items = len(item_ids)
    genres = np.array(_GENRES)
    primary = items.cluster % len(_GENRES)
    has_second = rng.random(num_items) < 0.35
    second_genre = (primary + rng.integers(1, len(_GENRES), num_items)) % len(_GENRES)
    lengths = 1 + has_second.astype(np.int32)
    offsets = np.zeros(num_items + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.empty(int(offsets[-1]), dtype=np.int64)
    values[offsets[:-1]] = primary
    values[offsets[1:][has_second] - 1] = second_genre[has_second]
    genre_lists = pa.ListArray.from_arrays(
        pa.array(offsets, type=pa.int32()), pa.array(genres[values].tolist(), type=pa.string())
    )
    years = np.clip(2023 - np.floor(rng.exponential(12.0, num_items)), 1930, 2023).astype(np.int64)
    return pa.table(
        {
            "item_id": item_ids,
            "title": pa.array([f"Item {i}" for i in range(1, num_items + 1)], type=pa.string()),
            "genres": genre_lists.cast(pa.list_(pa.string())),
            "year": pa.array([str(y) for y in years.tolist()], type=pa.string()),
        }
    )


def generate_synthetic(
    *,
    num_users: int = 2000,
    num_items: int = 1000,
    interactions_per_user: float = 40.0,
    num_clusters: int = 12,
    seed: int = 0,
    start_time: int = 1_600_000_000,
) -> InteractionLog:
    """Generate a synthetic, realistically skewed interaction log (deterministic for ``seed``).

    Users ``u1..uN`` carry the features ``age_group`` and ``segment`` (a string correlated with the
    user's main taste cluster); items ``i1..iM`` carry ``genres`` (list of strings, from the item's
    cluster) and ``year`` (string) plus the metadata column ``title``. Each user has a log-normal
    number of interactions with mean about ``interactions_per_user`` and at least
    ``min(5, num_items)`` (and at most half the catalogue, where that is more); timestamps are unix seconds in
    ``[start_time, start_time + 180 days]``, increasing per user. The interactions table has
    :data:`~onnxrec.trainer.data.log.INTERACTION_SCHEMA`, sorted by user then time.

    Raises :class:`~onnxrec.errors.DataError` for a non-positive size.
    """
    _check_args(num_users, num_items, interactions_per_user, num_clusters)
    num_users = int(num_users)
    num_items = int(num_items)
    num_clusters = int(num_clusters)
    rng = np.random.default_rng(seed)  # every draw below comes from it, in this order

    items = _draw_items(rng, num_items, num_clusters)
    users, tastes = _draw_tastes(rng, items, num_clusters, num_users)
    counts = _interaction_counts(rng, num_users, num_items, interactions_per_user)
    user_idx, item_idx = _select_distinct(rng, counts, tastes)
    timestamps = _timestamps(rng, user_idx, counts, start_time)
    ratings = _ratings(rng, items, users, user_idx, item_idx)

    user_ids = pa.array([f"u{i}" for i in range(1, num_users + 1)], type=pa.string())
    item_ids = pa.array([f"i{i}" for i in range(1, num_items + 1)], type=pa.string())
    interactions = pa.table(
        {
            "user_id": pc.take(user_ids, pa.array(user_idx)),
            "item_id": pc.take(item_ids, pa.array(item_idx)),
            "rating": pa.array(ratings, type=pa.float64()),
            "timestamp": pa.array(timestamps, type=pa.int64()),
        }
    ).cast(INTERACTION_SCHEMA)
    user_table = _user_table(rng, user_ids, users)
    item_table = _item_table(rng, item_ids, items)
    return InteractionLog(
        interactions=interactions,
        source=(
            f"synthetic(num_users={num_users}, num_items={num_items}, "
            f"interactions_per_user={interactions_per_user:g}, num_clusters={num_clusters}, seed={seed})"
        ),
        user_table=user_table,
        item_table=item_table,
        user_feature_columns=("age_group", "segment"),
        item_feature_columns=("genres", "year"),
    )
