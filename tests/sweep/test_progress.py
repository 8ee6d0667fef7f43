"""Honest progress (issue #17): a sweep's bar counts denoising steps as the runner does them, so after the first
quarter of a batched sweep it shows a non-zero count and an ETA within 2x of the true remaining time. Before, the
batched engine counted cells when a whole chunk finished: 0 until the end.

The time is a fake clock (issue #28: no test asserts on wall-clock time): the UNet advances it by its batch size, as
a GPU-bound model's cost grows, and the bar's updates are stamped with it. So the test measures whether the bar counts
work as the runner does it, not how busy the machine is.
"""

from __future__ import annotations

import pytest
import tqdm.auto

from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.sweep.run import run_sweep


class _FakeClock:
    """Seconds that pass only when the (patched) UNet runs."""

    def __init__(self):
        self.now = 0.0

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _RecordingBar(tqdm.auto.tqdm):
    records: list = []
    clock: _FakeClock

    def update(self, n=1):
        result = super().update(n)
        _RecordingBar.records.append((_RecordingBar.clock.now, self.n, self.total))
        return result


def eta_after_a_quarter(records, ended: float) -> tuple[float, float, int]:
    """``(eta, remaining, done)`` read off the bar at the first update after a quarter of the run, on the clock the
    records were stamped with (the ETA tqdm would show: the rate so far applied to the work left).

    >>> eta_after_a_quarter([(1.0, 1, 4), (2.0, 2, 4), (3.0, 3, 4), (4.0, 4, 4)], 4.0)
    (3.0, 3.0, 1)
    """
    when, done, total = next(record for record in records if record[0] >= 0.25 * ended)
    return when * (total - done) / done, ended - when, done


@pytest.mark.parametrize("engine", ["batched", "per-cell"])
def test_progress_counts_denoising_steps_and_the_eta_holds_early(engine, tiny_pipe, sources_dir, tmp_path,
                                                                  monkeypatch):
    unet, forward = tiny_pipe.unet, tiny_pipe.unet.forward
    clock = _FakeClock()

    def costed_forward(sample, *args, **kwargs):
        clock.advance(0.004 * sample.shape[0])  # a UNet whose cost is its batch size, as on a GPU-bound model
        return forward(sample, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", costed_forward)
    monkeypatch.setattr(tqdm.auto, "tqdm", _RecordingBar)
    _RecordingBar.records, _RecordingBar.clock = [], clock
    plan = SweepPlan(images=[str(sources_dir / "source0.png")], prompts=["a cat"],
                     strengths=[0.2, 0.4, 0.6, 0.8, 1.0], seeds=[0, 1, 2, 3], steps=[20], guidance_scales=[2.0])
    table = run_sweep(plan, tmp_path / "run", pipe=tiny_pipe, engine=engine, progress=True)
    records = _RecordingBar.records
    total = records[-1][2]
    assert total == table["unet_evaluations"].clip(lower=1).sum() and records[-1][1] == total  # every step, once
    eta, remaining, done = eta_after_a_quarter(records, clock.now)
    assert done > 0
    assert 0.5 * remaining <= eta <= 2 * remaining, (eta, remaining, done, total)
