"""Markdown tables for the benchmark pages (one format for every page)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """`df` as a markdown table: floats to `digits` significant digits (whole numbers from 1000 on), NaN as
    "-", booleans as yes/no."""
    def fmt(x) -> str:
        if isinstance(x, (bool, np.bool_)):
            return "yes" if x else "no"
        if isinstance(x, (float, np.floating)):
            return "-" if np.isnan(x) else f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"
        return str(x)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)])
