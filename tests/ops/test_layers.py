"""The package's layers hold: the import-linter contracts of pyproject.toml are kept, and
domain errors carry no HTTP status."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from exchange.errors import ExchangeError

REPO = Path(__file__).resolve().parents[2]


def test_the_import_contracts_are_kept() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which(
        "lint-imports"
    )
    assert lint_imports is not None, "import-linter is in the test extra: pip install -e '.[test]'"
    run = subprocess.run([lint_imports], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_a_domain_error_has_a_code_and_no_http_status() -> None:
    error = ExchangeError("insufficient_funds", "insufficient USDT", {"asset": "USDT"})
    assert (error.code, error.details) == ("insufficient_funds", {"asset": "USDT"})
    assert not hasattr(error, "status")
