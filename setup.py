"""Build hook: the wheel ships papyrus_widgets/static/widget.js, bundled from js/src/ by js/build.mjs.

`make` builds it before installing; a bare `pip install .` or `python -m build` from a checkout
builds it here when it is missing (needs Node.js and npm; npm ci installs the pinned esbuild). A
wheel built from the sdist uses the bundle the sdist carries. Everything else is in pyproject.toml.
"""

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
BUNDLE = ROOT / "papyrus_widgets" / "static" / "widget.js"


def build_widget_js() -> None:
    if BUNDLE.exists() or not (ROOT / "js" / "src" / "widget.js").exists():
        return
    if not shutil.which("node") or not shutil.which("npm"):
        raise SystemExit("papyrus_widgets/static/widget.js is missing and Node.js/npm are not installed: make static")
    if not (ROOT / "js" / "node_modules" / "esbuild").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ROOT / "js", check=True)
    subprocess.run(["node", str(ROOT / "js" / "build.mjs")], check=True)


class BuildPy(build_py):
    def run(self) -> None:
        build_widget_js()
        super().run()


setup(cmdclass={"build_py": BuildPy})
