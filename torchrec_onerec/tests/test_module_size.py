"""Every module of the package stays short enough to read in one sitting: one concept per file."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
MAX_LINES = 500


def test_no_module_is_over_500_lines() -> None:
    sizes = {
        path.relative_to(PACKAGE.parent).as_posix(): len(path.read_text().splitlines())
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    assert len(sizes) > 50, f"found only {len(sizes)} modules under {PACKAGE}; is the package layout different?"
    too_long = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert not too_long, (
        f"modules over {MAX_LINES} lines: {too_long}; split each by concept (one concept per "
        "file) rather than raising the limit"
    )
