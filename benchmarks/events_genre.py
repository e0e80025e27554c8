"""Do a few tracked events move a known user's answer toward what they watched? (issue #18)

For each of ``--users`` known users of an exported MovieLens version and each ``--genres`` genre: the
``k`` items of the user's answer before (``recommend``, seen items and the tracked items excluded) and
after tracking the genre's ``--events`` most popular items the user has not seen (the history graph
with those items first, then the user's known items newest first: what the server's events stage
feeds it), and how many of each answer are of that genre. In-process, through the version's own
onnxruntime sessions (:class:`~onnxrec.server.loaded_model.LoadedModel`), the same inputs the server
builds.

    python benchmarks/events_genre.py VERSION_DIR [--genres Horror,Sci-Fi] [--users 20]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pyarrow.parquet as pq

from onnxrec.server.loaded_model import LoadedModel


def main() -> None:
    """Measure every genre and print one JSON line per genre."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("version", help="an exported version directory of a MovieLens model (items have genres)")
    ap.add_argument("--genres", default="Horror,Sci-Fi,Musical,Western,Children's")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--events", type=int, default=3)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    model = LoadedModel(args.version)
    items = pq.read_table(model.path / "items.parquet")
    genres = items["genres"].to_pylist()
    by_popularity = np.argsort(-np.asarray(items["popularity"].to_numpy()), kind="stable")
    users = np.linspace(0, model.num_users - 1, args.users).astype(int)
    for genre in args.genres.split(","):
        of_genre = np.array([genre in (g or []) for g in genres])
        before = after = more = fewer = 0
        for u in users:
            seen = set(model.seen(u).tolist())
            tracked = np.array([i for i in by_popularity if of_genre[i] and i not in seen][: args.events])
            exclude = np.concatenate([tracked, model.seen(u), [-1]])
            (b,) = model.recommend(np.array([u]), [exclude], args.k)
            history = np.concatenate([tracked[::-1], model.seen(u)[::-1]])[: model.history_len]
            (a,) = model.recommend_from_history([history], [exclude], [model.user_feature_codes(int(u))], args.k)
            nb, na = int(of_genre[b.items].sum()), int(of_genre[a.items].sum())
            before, after, more, fewer = before + nb, after + na, more + (na > nb), fewer + (na < nb)
        print(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "model_type": model.model_type,
                    "genre": genre,
                    "users": len(users),
                    "genre_items_before": before,
                    "genre_items_after": after,
                    "users_with_more": more,
                    "users_with_fewer": fewer,
                }
            )
        )


if __name__ == "__main__":
    main()
