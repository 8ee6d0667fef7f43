"""Honest progress (issue #17): a sweep's bar counts denoising steps as the runner does them, so after the first
quarter of a batched sweep it shows a non-zero count and an ETA within 2x of the true remaining time (a fake slow
UNet makes the timing the UNet's). Before, the batched engine counted cells when a whole chunk finished: 0 until the
end."""

from __future__ import annotations

import time

import pytest
import tqdm.auto

from img2img_lab.plan import SweepPlan
from img2img_lab.sweep import run_sweep


class _RecordingBar(tqdm.auto.tqdm):
    records: list = []

    def update(self, n=1):
        result = super().update(n)
        _RecordingBar.records.append((time.perf_counter(), self.n, self.total))
        return result


@pytest.mark.parametrize("engine", ["batched", "per-cell"])
def test_progress_counts_denoising_steps_and_the_eta_holds_early(engine, tiny_pipe, sources_dir, tmp_path,
                                                                  monkeypatch, capsys):
    unet, forward = tiny_pipe.unet, tiny_pipe.unet.forward

    def slow_forward(sample, *args, **kwargs):
        time.sleep(0.004 * sample.shape[0])  # a UNet whose cost is its batch size, as on a GPU-bound model
        return forward(sample, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", slow_forward)
    monkeypatch.setattr(tqdm.auto, "tqdm", _RecordingBar)
    _RecordingBar.records = []
    plan = SweepPlan(images=[str(sources_dir / "source0.png")], prompts=["a cat"],
                     strengths=[0.2, 0.4, 0.6, 0.8, 1.0], seeds=[0, 1, 2, 3], steps=[20], guidance_scales=[2.0])
    started = time.perf_counter()
    table = run_sweep(plan, tmp_path / "run", pipe=tiny_pipe, engine=engine, progress=True)
    ended = time.perf_counter()
    records = _RecordingBar.records
    total = records[-1][2]
    assert total == table["unet_evaluations"].clip(lower=1).sum() and records[-1][1] == total  # every step, once
    when, done, _ = next(record for record in records if record[0] - started >= 0.25 * (ended - started))
    assert done > 0
    eta = (when - started) * (total - done) / done
    remaining = ended - when
    with capsys.disabled():
        print(f"\n[progress] {engine}: after {when - started:.1f} s of {ended - started:.1f} s the bar shows "
              f"{done}/{total} steps; ETA {eta:.1f} s vs {remaining:.1f} s left ({eta / remaining:.2f}x)")
    assert 0.5 * remaining <= eta <= 2 * remaining, (eta, remaining, done, total)
