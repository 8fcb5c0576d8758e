"""The hand-written SQL of sql/queries/, loaded once and named by file: Q.wallets_for_user."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType


def find_sql_dir() -> Path:
    """sql/ as installed inside the package (wheel), or at the top of a source checkout."""
    package = Path(__file__).resolve().parent.parent  # exchange/
    for candidate in (package / "sql", package.parent / "sql"):
        if (candidate / "migrations").is_dir():
            return candidate
    raise RuntimeError(f"sql/ not found in or next to {package}")


SQL_DIR = find_sql_dir()


class Queries:
    """Read-only namespace of query texts; an unknown name fails loudly."""

    def __init__(self, directory: Path) -> None:
        texts = {path.stem: path.read_text() for path in sorted(directory.glob("*.sql"))}
        self._texts = MappingProxyType(texts)

    def __getattr__(self, name: str) -> str:
        try:
            return self._texts[name]
        except KeyError:
            raise AttributeError(f"no sql/queries/{name}.sql") from None


Q = Queries(SQL_DIR / "queries")
