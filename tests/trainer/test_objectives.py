"""A toy objective defined and registered here: it trains through the ordinary loop, and its
metrics reduce exactly under gradient accumulation and over two workers (gloo, spawned
processes, no Ray) to what one worker without accumulation reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gloo_workers import run_workers

from t3d.trainer.build import Dist, build_trainer
from t3d.trainer.config import build_config
from t3d.trainer.objectives import OBJECTIVES, Metric, Objective, register, response_inputs, scatter
from t3d.trainer.step import evaluate, reduce_metrics, train_step


@register
class ToyCE(Objective):
    """CE against x0 over M (a token mean over the step); metrics: a token mean and a sequence
    mean of log p(x0), whose micro-batch counts differ, so a mean of micro-batch means is wrong."""

    name = "toy_ce"
    parts = ("loss",)

    def counts(self, states):
        return {"tokens": states.supervised.sum()}

    def loss(self, micro):
        states, select = micro.states, micro.states.supervised  # (B, L)
        ids = states.targets[select].long().unsqueeze(-1)  # (N, 1)
        with micro.autocast():
            logp = scatter(micro.student(*response_inputs(states, select), ids=ids), select)[..., 0]  # (B, L)
        tokens = select.sum()
        loss = torch.where(select, -logp, 0).sum() / micro.norms["tokens"].clamp(min=1)
        per_row = torch.where(select, logp, 0).sum(-1) / select.sum(-1).clamp(min=1)  # (B,)
        rows = select.any(-1)  # (B,)
        return loss, {
            "loss": Metric.total(loss),
            "toy_tokens": Metric.total(tokens),
            "toy_token_logp": Metric.mean(torch.where(select, logp, 0).sum() / tokens.clamp(min=1), tokens),
            "toy_row_logp": Metric.mean(torch.where(rows, per_row, 0).sum() / rows.sum().clamp(min=1), rows.sum()),
        }


KEYS = ("loss", "toy_tokens", "toy_token_logp", "toy_row_logp", "rows", "supervised_tokens", "grad_norm")


def _flags(kit, datasets, teachers, out, **extra):
    return kit.flags(datasets["bidirectional"], teachers["bidirectional"], out, loss="toy_ce", random_ratio=0.0, **extra)


def _first_step(cfg, dist=Dist()):
    """The first step's metrics, the rows it read, and each micro-batch's own token mean (before the step)."""
    trainer = build_trainer(cfg, dist, log=lambda *a: None)
    batches = [trainer.loader.next_batch() for _ in range(cfg.train.grad_accum)]
    own = [evaluate(trainer, [b])["toy_token_logp"] for b in batches] if dist.world == 1 else []
    return train_step(trainer, batches), [b.row_id for b in batches], own


def one_step_on_a_worker(rank: int, world: int, flags: dict) -> tuple[dict, np.ndarray]:
    """In a spawned gloo worker (see `gloo_workers`): the first step's metrics and the rows it read."""
    metrics, rows, _ = _first_step(build_config(flags), Dist(rank=rank, world=world))
    return metrics, torch.cat(rows).numpy()


def test_toy_objective_is_registered_and_trains(kit, teachers, datasets, tmp_path):
    assert OBJECTIVES["toy_ce"].parts == ("loss",)
    cfg = build_config(_flags(kit, datasets, teachers, tmp_path / "out", max_steps=8, lr=1e-2, batch_size=8))
    trainer = build_trainer(cfg, log=lambda *a: None)
    assert trainer.reference is None and trainer.objective is OBJECTIVES["toy_ce"]
    fixed = [trainer.loader.load_rows(np.arange(trainer.loader.num_rows), epoch=0)]
    before = evaluate(trainer, fixed)
    for _ in range(cfg.train.max_steps):
        train_step(trainer, [trainer.loader.next_batch()])
    after = evaluate(trainer, fixed)
    assert after["loss"] < before["loss"] - 0.05, (before, after)
    assert before["toy_token_logp"] == pytest.approx(-before["loss"], rel=1e-6)  # CE = -(token mean of log p)
    assert after["toy_row_logp"] > before["toy_row_logp"]


@pytest.mark.slow
def test_toy_metrics_reduce_exactly_under_accumulation_and_two_workers(kit, teachers, datasets, tmp_path):
    one, one_rows, _ = _first_step(build_config(_flags(kit, datasets, teachers, tmp_path / "one", batch_size=4)))
    accum, accum_rows, own = _first_step(build_config(_flags(kit, datasets, teachers, tmp_path / "acc", batch_size=2,
                                                        grad_accum=2)))  # fmt: skip
    workers = run_workers(__file__, "one_step_on_a_worker", (_flags(kit, datasets, teachers, tmp_path / "two",
                                                                     batch_size=2, num_workers=2),), tmp_path / "store")  # fmt: skip
    assert workers[0][0] == workers[1][0]  # every worker reports the same reduced metrics
    two, two_rows = workers[0][0], np.concatenate([rows for _, rows in workers])
    rows = sorted(torch.cat(one_rows).numpy().tolist())
    assert sorted(torch.cat(accum_rows).numpy().tolist()) == rows == sorted(two_rows.tolist())  # the same global batch
    assert one["rows"] == accum["rows"] == two["rows"] == 4
    assert np.mean(own) != pytest.approx(one["toy_token_logp"], rel=1e-4)  # a mean of micro-batch means would be wrong
    for key in KEYS:
        assert accum[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key


def test_a_metric_that_does_not_say_how_it_reduces_is_refused():
    parts = [{"loss": Metric.total(torch.tensor(1.0)), "new_part": torch.tensor(0.5)}]
    with pytest.raises(TypeError, match="'new_part' is a Tensor, not a Metric"):
        reduce_metrics(parts, Dist())
    two = [{"m": Metric.mean(torch.tensor(1.0), torch.tensor(3))}, {"m": Metric.mean(torch.tensor(2.0), torch.tensor(1))}]
    assert reduce_metrics(two, Dist())["m"] == pytest.approx(1.25)  # (3 x 1 + 1 x 2) / 4, not (1 + 2) / 2


def test_every_objective_file_in_the_package_registers_without_a_name_list():
    """A new objective is its file alone: __init__ imports every module of the package."""
    import pkgutil

    import t3d.trainer.objectives as package
    from t3d.trainer.objectives import OBJECTIVES

    files = {m.name for m in pkgutil.iter_modules(package.__path__)} - {"base"}
    registered_from = {type(o).__module__.rsplit(".", 1)[-1] for o in OBJECTIVES.values()}
    assert files <= registered_from  # each file's objective is registered on import
    assert {"t3d", "ce", "ddo", "fkl", "certainty", "cap", "d3llm"} <= set(OBJECTIVES)
