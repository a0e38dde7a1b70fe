"""The import rule of CONTRIBUTING.md, as `make lint` checks it (import-linter, pyproject.toml): a package of src/
imports only packages below it, a command imports no other command, and no import circle exists."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# the venv's (beside the interpreter), else the one on PATH
LINT_IMPORTS = shutil.which("lint-imports", path=Path(sys.executable).parent) or shutil.which("lint-imports")
pytestmark = pytest.mark.skipif(
    LINT_IMPORTS is None, reason="import-linter is not installed (it is in the dev extra: make install)"
)


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"], cwd=root, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_src_keeps_the_import_rule():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "added_import", "broken"),
    [
        # a wing importing a wing above it: data would need training
        (
            "src/data/digits.py",
            "import src.training.module",
            "src.data is not allowed to import src.training",
        ),
        # a command importing another command
        ("src/explain.py", "import src.predict", "src.explain is not allowed to import src.predict"),
        # a circle inside one wing: mixing.py <- module.py already
        ("src/training/mixing.py", "import src.training.module", "No cycles are allowed in src.training"),
    ],
)
def test_an_import_against_the_rule_fails_the_check(tmp_path, module, added_import, broken):
    shutil.copytree(ROOT / "src", tmp_path / "src")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / module, "a") as file:
        file.write(f"\n{added_import}\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0 and broken in result.stdout, result.stdout[-3000:]
