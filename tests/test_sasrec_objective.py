"""SASRec's all-positions objective: the windows hold every training target once per epoch with only the
items before it as context, the loss is the mean of each position's next-item loss, and training on it
through the fit loop repeats exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from onnxrec.errors import TrainingError
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, save_dataset
from onnxrec.trainer.history import UserSequences
from onnxrec.trainer.models.sasrec import SasRec, SasRecConfig
from onnxrec.trainer.sequence_fit import SequenceStep, epoch_windows, windows_per_step
from onnxrec.trainer.train import train

LENGTHS = [0, 1, 2, 5, 6, 7, 23, 4]  # sequence lengths around the window length 5


def _sequences() -> UserSequences:
    """Users of LENGTHS items; every item index is unique, so an item names its user and place."""
    indptr = np.concatenate([[0], np.cumsum(LENGTHS)]).astype(np.int64)
    return UserSequences(indptr, np.arange(indptr[-1], dtype=np.int64))


@pytest.mark.parametrize("seed", range(6))
def test_every_target_once_per_epoch_from_the_items_before_it(seed: int) -> None:
    seq = _sequences()
    length = 5
    w = epoch_windows(seq, length, np.random.default_rng(seed))
    assert w.history.shape == w.targets.shape == (len(w.users), length)
    # each item but a sequence's first is the target of exactly one position
    expected = np.concatenate([seq.of(u)[1:] for u in range(len(LENGTHS))])
    got = w.targets[w.targets >= 0]
    assert sorted(got.tolist()) == sorted(expected.tolist())
    for row in range(len(w.users)):
        user = w.users[row]
        own = seq.of(user)
        hist, targets = w.history[row], w.targets[row]
        assert np.isin(hist[hist >= 0], own).all() and np.isin(targets[targets >= 0], own).all()
        for p in np.flatnonzero(targets >= 0):
            t = int(np.searchsorted(own, targets[p]))  # the target's place in its sequence
            # the context at p and older: the items before the target, newest first, never the target or later
            context = hist[p:]
            before = own[:t][::-1][: length - p]
            assert context[: len(before)].tolist() == before.tolist()
            assert (context[len(before) :] == -1).all()
            if p > 0:  # the target is the next (newer) position's input, which position p does not read
                assert hist[p - 1] == targets[p]
        # padding sits at the old end of a window only
        pads = np.flatnonzero(hist < 0)
        assert (pads == np.arange(length - len(pads), length)).all()


def test_the_windows_change_between_epochs_but_not_for_one_seed() -> None:
    seq = _sequences()
    a, b = (epoch_windows(seq, 5, np.random.default_rng(s)) for s in (0, 0))
    assert np.array_equal(a.history, b.history) and np.array_equal(a.targets, b.targets)
    histories = {epoch_windows(seq, 5, np.random.default_rng(s)).history.tobytes() for s in range(8)}
    assert len(histories) > 1


def _model() -> SasRec:
    torch.manual_seed(0)
    return SasRec(SasRecConfig(num_users=3, num_items=20, dim=8, blocks=2, heads=2, history_len=6, dropout=0.0))


@pytest.mark.parametrize("loss", ["softmax", "bce", "bpr"])
def test_the_loss_is_each_target_positions_own_loss(loss: str) -> None:
    """The step's loss is the mean over target positions of the loss of the encoder's output at that
    position, computed one position at a time here; padding targets (-1) add nothing."""
    model = _model()
    history = torch.tensor([[5, 3, 9, 1, -1, -1], [7, 2, 11, 4, 6, 8]])
    targets = torch.tensor([[12, 5, -1, 9, -1, -1], [1, 7, 2, 11, 4, 6]])
    full = loss == "softmax"
    negatives = torch.randint(0, 20, (int((targets >= 0).sum()), 0 if full else 3))
    step = SequenceStep(model, loss, 0.5 if full else 1.0, full_softmax=full)
    with torch.no_grad():
        got = step(history, targets, negatives)
        out = model.encode(history)
        losses = []
        for n, (w, p) in enumerate((targets >= 0).nonzero().tolist()):
            if full:
                losses.append(F.cross_entropy(out[w, p] @ model.item_emb.T / 0.5, targets[w, p]))
            else:
                cands = torch.cat([targets[w, p : p + 1], negatives[n]])
                scores = model.item_emb[cands] @ out[w, p]
                if loss == "bce":
                    labels = torch.zeros(4)
                    labels[0] = 1.0
                    losses.append(F.binary_cross_entropy_with_logits(scores, labels))
                else:
                    losses.append(-F.logsigmoid(scores[0] - scores[1:]).mean())
        torch.testing.assert_close(got, torch.stack(losses).mean(), rtol=1e-5, atol=1e-6)


def test_a_step_takes_as_many_windows_as_sequence_batch_size_target_positions_fill() -> None:
    default = TrainConfig()
    assert default.sequence_batch_size == 512
    assert windows_per_step(default, 50, 1) == 10  # not --batch-size's 1024 // 50 = 20 (#19)
    assert windows_per_step(default, 50, 2) == 5  # each rank its share
    assert windows_per_step(default, 1000, 1) == 1  # at least one
    assert windows_per_step(TrainConfig(batch_size=64, sequence_batch_size=1024), 8, 1) == 128
    with pytest.raises(TrainingError, match="sequence_batch_size"):
        windows_per_step(TrainConfig(sequence_batch_size=0), 50, 1)


def _train(data: Path, out: Path, **overrides: object) -> Path:
    cfg = TrainConfig(
        data=str(data), out=str(out), model="sasrec", epochs=2, dim=16, history_len=8, progress=False, threads=1
    )
    return train(TrainConfig(**{**cfg.to_dict(), **overrides}))


def test_training_on_every_position_repeats_and_counts_its_targets(synthetic: Dataset, tmp_path: Path) -> None:
    data = save_dataset(synthetic, tmp_path / "data")
    runs = [_train(data, tmp_path / f"run{i}", sequence_batch_size=64) for i in range(2)]
    records = [[json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()] for r in runs]
    seq = UserSequences.from_parts([synthetic.splits.train], synthetic.num_users)
    targets = int(np.maximum(np.diff(seq.indptr) - 1, 0).sum())  # every item but each user's first
    assert [r["examples"] for r in records[0]] == [targets, targets]
    assert records[0][1]["loss"] < records[0][0]["loss"]
    states = [torch.load(r / "checkpoint.pt", weights_only=True)["state_dict"] for r in runs]
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name
    summary = json.loads((runs[0] / "eval.json").read_text())
    assert summary["model_type"] == "sasrec"
    assert all(r["cpu_seconds"] > 0 for r in records[0])
    # the per-prefix objective still trains (one example per training item)
    prefix = _train(data, tmp_path / "prefix", epochs=1, sequence_objective="last_position")
    record = json.loads((prefix / "metrics.jsonl").read_text().splitlines()[0])
    assert record["examples"] == len(seq.items)
