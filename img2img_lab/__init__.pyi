# The public face of img2img_lab, in the order data flows (read by lazy_loader.attach_stub in __init__.py, and by
# type checkers and editors). Each name is imported from its module the first time it is used.

# 1. plan: what to generate
from .plan.sweep_plan import Cell as Cell, SweepPlan as SweepPlan
from .calibration.settings import load_config as load_config
from .images.hashes import content_hash as content_hash
from .images.intake import load_image as load_image
from .resources import bundled_sources as bundled_sources

# 2. load: a diffusers pipeline (or the embedded model) and what it is
from .models.handle import ModelHandle as ModelHandle
from .models.loading import load_model as load_model, load_pipeline as load_pipeline
from .strength.mapping import strength_map as strength_map, translate as translate

# 3. sweep: run the cells into a run folder
from .engine.per_cell import run_cell as run_cell
from .store.run_store import RunStore as RunStore
from .sweep.run import run_sweep as run_sweep

# 4. measure: every output against its source
from .metrics.measure import measure_pairs as measure_pairs, measure_run as measure_run

# 5. calibrate: the reference table with confidence intervals
from .calibration.modes import calibrate_modes as calibrate_modes
from .calibration.procedure import calibrate as calibrate
from .calibration.result import CalibrationResult as CalibrationResult

# 6. figures and report
from .figures.curves import strength_curves as strength_curves
from .figures.grids import comparison_grid as comparison_grid
from .figures.report import write_report as write_report
from .figures.style import table_view as table_view

# 7. widgets (JupyterLab)
from .widgets.grid_explorer import GridExplorer as GridExplorer
from .widgets.strength_explorer import StrengthExplorer as StrengthExplorer

# 8. errors (imported eagerly: they are light)
from .errors import (
    ImageError as ImageError,
    Img2ImgLabError as Img2ImgLabError,
    ModelError as ModelError,
    PlanError as PlanError,
    StoreError as StoreError,
)

__version__: str
