"""The model a stage trains, and which of its parameters may change (the freeze policy).

    model, tokenizer_json = build_model(args, recipe(args))   # from the bases (stage 1) or a checkpoint (--init)
    params = set_trainable(model, stage)                       # what the optimizer gets
    set_train_mode(model)                                      # train mode, the frozen tower in eval mode

Stage 1 trains the projector; stage 2 the projector and the LLM, or with --lora-r the projector and LoRA adapters on
the frozen LLM (model/lora.py). The vision tower never trains.
"""
from __future__ import annotations

import os

import torch

from llava_mini.data.tokenizer import Tokenizer
from llava_mini.loading import weights
from llava_mini.loading.adapters import is_adapter, load_adapter
from llava_mini.model.config import LlavaConfig
from llava_mini.model.llava import LlavaForConditionalGeneration
from llava_mini.model.lora import apply_lora, lora_layers, lora_parameters
from llava_mini.model.projector import LlavaMultiModalProjector
from llava_mini.training.recipes import PRESETS, StageRecipe


def build_model(args, r: StageRecipe) -> tuple[LlavaForConditionalGeneration, str]:
    """The model and the path of its tokenizer.json. Stage 1 from a CLIP + an LLM (+ a new projector), or from a LLaVA
    checkpoint (--init; also how stage 2 starts, and how --resume reloads). With LoRA, the adapters go on the LLM's
    linear layers; a LoRA run resumes from its adapter, which names its base."""
    if args.init:
        if is_adapter(args.init):
            model = load_adapter(args.init)
        else:
            model = weights.load_llava(args.init)
            if r.lora_r is not None:
                apply_lora(model.language_model, r.lora_r, r.lora_alpha, r.lora_dropout, r.lora_targets)
        return model, os.path.join(args.init, "tokenizer.json")
    llm_dir = args.llm
    if llm_dir == "smollm2":
        from llava_mini.loading.hub import get_smollm2
        llm_dir = get_smollm2()
    tokenizer_json = os.path.join(llm_dir, "tokenizer.json")
    tokenizer = Tokenizer.from_file(tokenizer_json)
    vision = weights.load_clip(args.vision, vision_only=True)
    llm = weights.load_llama(llm_dir)
    config = LlavaConfig(vision_config=vision.config, text_config=llm.config,
                         projector_type=args.projector_type or PRESETS[args.preset].projector_type,
                         image_aspect_ratio=PRESETS[args.preset].image_aspect_ratio,
                         image_token_index=tokenizer.image_token_id)
    with weights.parameters_on_meta():
        model = LlavaForConditionalGeneration(config)
    # The towers come in as loaded; only the projector is new (PyTorch's default init, as in LLaVA).
    model.vision_tower, model.language_model = vision, llm
    model.multi_modal_projector = LlavaMultiModalProjector(config)
    return model, tokenizer_json


def set_trainable(model: LlavaForConditionalGeneration, stage: int) -> list[torch.nn.Parameter]:
    """The freeze policy: the vision tower never trains; stage 1 trains the projector, stage 2 projector + LLM, or,
    when the LLM carries LoRA layers, projector + adapters (the LLM's own weights stay as they are)."""
    model.requires_grad_(False)
    model.multi_modal_projector.requires_grad_(True)
    if stage == 2 and lora_layers(model):
        for p in lora_parameters(model):
            p.requires_grad_(True)
    elif stage == 2:
        model.language_model.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def set_train_mode(model: LlavaForConditionalGeneration) -> None:
    model.train()
    model.vision_tower.eval()      # frozen: no dropout or other train-time behaviour, ever
