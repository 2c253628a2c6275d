"""metrics.csv (one row per optimizer step) and loss.png, beside a run's checkpoints.

    log = MetricsLog(out_dir); log.write({"step": 1, "loss": 2.3, ...}); log.plot("stage 2")
"""
from __future__ import annotations

import csv
import os


class MetricsLog:
    """metrics.csv (one row per optimizer step) and loss.png. On resume the rows after the resumed step are dropped,
    so the file always describes one consistent run."""
    FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"]

    def __init__(self, out_dir: str, resume_step: int | None = None):
        self.path = os.path.join(out_dir, "metrics.csv")
        self.png = os.path.join(out_dir, "loss.png")
        rows = self.read(self.path) if resume_step is not None and os.path.exists(self.path) else []
        # A run killed while appending leaves a partial last row ("1" of "12,0.5,..."): only whole rows count.
        complete = [r for r in rows if None not in r.values() and r.get(self.FIELDS[-1]) not in (None, "")]
        self.rows = [r for r in complete if int(r["step"]) <= resume_step] if resume_step is not None else []
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)

    @staticmethod
    def read(path: str) -> list[dict]:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def write(self, row: dict) -> None:
        row = {k: row.get(k, "") for k in self.FIELDS}
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow(row)

    def plot(self, title: str = "") -> None:
        """Loss per step (and a smoothed line) to loss.png; matplotlib with the Agg backend, so no display is needed."""
        if not self.rows:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        steps = [int(r["step"]) for r in self.rows]
        losses = [float(r["loss"]) for r in self.rows]
        k = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]) for i in range(len(losses))]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, losses, alpha=0.35, label="loss")
        ax.plot(steps, smooth, label=f"mean of {k}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.png + ".tmp.png", dpi=100)
        plt.close(fig)
        os.replace(self.png + ".tmp.png", self.png)
