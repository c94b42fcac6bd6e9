"""Human-facing output: image grids (matplotlib)."""

from ddkit.report.grid import save_grid

__all__ = ["save_grid"]
