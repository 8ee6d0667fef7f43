"""The build step that bundles the repository's ``data/`` and ``notebooks/`` into the package (see
``img2img_lab/resources.py`` for why). Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLED = ("data", "notebooks")
SKIP = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.pyc", "runs")


class BuildPyWithBundledFiles(build_py):
    """``build_py`` that also copies ``data/`` and ``notebooks/`` to ``img2img_lab/_bundled/`` in the build."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout itself
            return
        target = Path(self.build_lib) / "img2img_lab" / "_bundled"
        for name in BUNDLED:
            source = ROOT / name
            if not source.is_dir():
                raise SystemExit(f"setup.py: {source} is missing; build from a complete checkout or sdist.")
            shutil.rmtree(target / name, ignore_errors=True)
            shutil.copytree(source, target / name, ignore=SKIP)


setup(cmdclass={"build_py": BuildPyWithBundledFiles})
