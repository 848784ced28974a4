"""Results stage: project tables beside Optuna's (runs, candidates), run outputs (best.json, CSV files),
plots and the printed summary.  Generated files go to a git-ignored run directory."""
