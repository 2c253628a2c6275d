"""Training: recipes (each stage's hyperparameters; the classroom configuration), args (train.py's command line),
loop (one loop for both stages), optim, checkpoints, distributed, metrics, and pipeline (the default job)."""
