"""The batched engine's denoiser calls: samples grouped by the shapes of their inputs, each group run in chunks of at
most the batch limit, the limit halved on CUDA out-of-memory.

Samples whose inputs have the same shapes share a call. Prompts of one family always do, except where a family's
text encoder gives each prompt its own length (Qwen-Image): those prompts' samples run in one call per length.

>>> import torch
>>> class Doubler:  # a stand-in conditioner: the denoiser doubles its input
...     device = torch.device("cpu")
...     def predict(self, inputs, t, fields):
...         return inputs * 2
>>> samples = [(torch.ones(1, 2), {"text": torch.zeros(1, length)}) for length in (3, 5, 3)]
>>> counters = {"unet_calls": 0, "unet_samples": 0}
>>> grouped_outputs(Doubler(), samples, 10, BatchSize(8), counters)[:, 0].tolist(), counters["unet_calls"]
([2.0, 2.0, 2.0], 2)
"""

from __future__ import annotations


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is an out-of-memory error (CUDA's, or one whose message says so)."""
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


class BatchSize:
    """The current denoiser batch limit; halves on CUDA out-of-memory.

    >>> limit = BatchSize(8); limit.halve(); (limit.value, limit.halvings)
    (4, 1)
    """

    def __init__(self, value: int):
        self.value = max(1, int(value))
        self.halvings = 0

    def halve(self) -> None:
        import torch

        if self.value == 1:
            raise RuntimeError("out of memory even with a batch of one sample")
        self.value = max(1, self.value // 2)
        self.halvings += 1
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def denoiser_outputs(conditioner, inputs, timestep, fields: dict, limit: BatchSize, counters: dict):
    """Run the denoiser (``conditioner.predict``) over ``inputs`` (one row per sample) with ``fields`` (one row per
    sample of every per-sample input) in chunks of ``limit.value`` samples, halving the chunk on CUDA out-of-memory.

    >>> import torch
    >>> class Identity:
    ...     device = torch.device("cpu")
    ...     def predict(self, inputs, t, fields):
    ...         return inputs
    >>> counters = {"unet_calls": 0, "unet_samples": 0}
    >>> denoiser_outputs(Identity(), torch.zeros(5, 1), 1, {}, BatchSize(2), counters).shape[0], counters["unet_calls"]
    (5, 3)
    """
    import torch

    outputs, start = [], 0
    while start < inputs.shape[0]:
        size = limit.value
        try:
            with torch.no_grad():
                chunk = conditioner.predict(inputs[start:start + size], timestep,
                                            {name: value[start:start + size] for name, value in fields.items()})
        except (RuntimeError, MemoryError) as error:
            if conditioner.device.type == "cuda" and is_oom(error):
                limit.halve()
                continue
            raise
        outputs.append(chunk)
        counters["unet_calls"] += 1
        counters["unet_samples"] += chunk.shape[0]
        start += size
    return torch.cat(outputs)


def grouped_outputs(conditioner, samples: list, timestep, limit: BatchSize, counters: dict):
    """The denoiser's output for ``samples`` (``(input, fields)`` per sample, each tensor one row), in order: samples
    whose inputs share their shapes go through :func:`denoiser_outputs` together."""
    import torch

    groups: dict[tuple, list[int]] = {}
    for row, (sample, fields) in enumerate(samples):
        signature = (tuple(sample.shape), tuple((name, tuple(value.shape)) for name, value in sorted(fields.items())))
        groups.setdefault(signature, []).append(row)
    outputs = [None] * len(samples)
    for rows in groups.values():
        names = samples[rows[0]][1]
        batch = denoiser_outputs(conditioner, torch.cat([samples[row][0] for row in rows]), timestep,
                                 {name: torch.cat([samples[row][1][name] for row in rows]) for name in names},
                                 limit, counters)
        for position, row in enumerate(rows):
            outputs[row] = batch[position:position + 1]
    return torch.cat(outputs)
