"""Search stage: search space, latency model, Optuna objective and study, baselines, exhaustive reference."""
