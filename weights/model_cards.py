"""Model cards for the tiny bases: a README.md (Hugging Face style) per folder from what make_tiny measured, and
the folder's SHA256SUMS, which the pipeline checks before it uses the bases.

    write_model_cards("weights/tiny", read_json("weights/tiny/make_tiny.json"))
"""
from __future__ import annotations

import os
import platform
import time

import torch

from llava_mini.jsonio import read_json
from llava_mini.loading.manifest import write_manifest
from llava_mini.training.recipes import BASES_REPORT
from weights.tiny_llama import query_heads

PROVENANCE = ("command", "seed", "seconds", "machine", "processes", "training_text", "sizes")   # a run's record
RUN_CHANGES = ("kv_heads_widened_from", "patch_weight")   # ... and what a run changed or added, when it did


def earlier_report(folder: str, flag: str) -> dict:
    """The make_tiny.json beside a base folder that an earlier make_tiny wrote (`flag`: the option that named the
    folder, for the error): the record of how that base was made."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{flag} {folder}: no such folder")
    report = os.path.join(os.path.dirname(os.path.abspath(folder)), BASES_REPORT)
    if not os.path.isfile(report):
        raise FileNotFoundError(f"{flag} {folder}: no {report}, the record of how that base was made")
    return read_json(report)


def earlier_runs(report: dict, base: str) -> list[dict]:
    """The records of every run that trained `base` ("clip" or "llama") as that make_tiny.json tells it: the runs
    before it (`{base}_made`) and, unless it kept that base as it was (`{base}_kept`), its own run."""
    made = report.get(f"{base}_made", [])
    if isinstance(made, dict):              # written before runs were listed: a kept base's one record
        return [made]
    own = {k: report[k] for k in PROVENANCE} | {k: report[k] for k in RUN_CHANGES if report.get(k)}
    return made + ([] if report.get(f"{base}_kept") else [own])


def write_model_cards(out_dir: str, stats: dict) -> None:
    """A model card (README.md, Hugging Face style) in each base's folder, from what make_tiny measured, and the
    folder's SHA256SUMS (loading/manifest.py), which the pipeline checks before it uses the bases."""
    qa = stats["text_qa"]
    # every run that trained each base, this one included unless it kept that base (--keep-clip, --keep-llama)
    clip_runs, llama_runs = earlier_runs(stats, "clip"), earlier_runs(stats, "llama")
    z, zc = stats["sizes"], clip_runs[-1]["sizes"]     # the LLaMA's shape is this run's (make_tiny reads a kept one's)
    cards = {
        "tiny-clip": f"""---
library_name: llava_mini
tags: [clip, vision, synthetic-data]
---
# tiny-clip: the classroom's stand-in for openai/clip-vit-large-patch14-336

A CLIP (ViT vision tower + text tower) trained from scratch, contrastively, on the shapes world's image-caption pairs
and object-phrase pairs, with shape- and position-swapped phrases as hard negatives; a run with a per-patch weight
also contrasts every patch alone with its object's phrase (weights/make_tiny.py, train_clip; each run below goes on
from the one before it). Hugging Face's CLIP layout:
`transformers.CLIPModel.from_pretrained` and `llava_mini.loading.weights.load_clip` both read it. LLaVA reads the
vision tower's layer -2 patch features and never trains it.

- Vision: {zc['image_size']} px images, {zc['patch_size']} px patches ({(zc['image_size'] // zc['patch_size']) ** 2}
  image tokens), hidden {zc['vision_hidden']}, {zc['vision_layers']} layers
""" + "".join(clip_run(run, i + 1) for i, run in enumerate(clip_runs)) + f"""
## Quality (held-out scenes)
- Zero-shot image->caption retrieval, top-1 among {stats['clip_retrieval_pool']}: {stats['clip_retrieval_top1']:.1%}
- Object->phrase retrieval: {stats['clip_region_top1']:.1%}
- Linear probes of each object in the layer -2 patch features (`python benchmarks/probe_tower.py --clip
  weights/tiny/tiny-clip`): """ + ", ".join(f"{k} {v:.1%}" for k, v in stats["tower_probes"].items()) + "\n",
        "tiny-llama": f"""---
library_name: llava_mini
tags: [llama, text-generation, synthetic-data]
---
# tiny-llama: the classroom's stand-in for Vicuna

A LLaMA (RMSNorm, RoPE, SwiGLU, tied embeddings) with a LLaMA-style BPE tokenizer (`<s>`,
`</s>`, byte fallback, `<image>` added), trained from scratch in three phases (weights/tiny_llama.py, train_llama):
pretraining on all the world's text, instruction tuning on the world's conversations, detailed descriptions,
complex reasoning and short answers with the scene given in words where the image will be, the loss on the
answers only, then a lookup drill: those chats and as many short-answer chats about new scenes that exist only in
words (weights/world_text.py, lookup_chats). A run may add a binding drill (`--binding-steps`): scenes listed in
one caption, each followed by the facts that bind its colours to its shapes ("The star is red. The white one is a
rectangle."), beside the drill's chats (weights/world_text.py, binding_texts); the runs below say which phases each
ran. Chat template: vicuna_v1. Hugging Face's LLaMA layout:
`transformers.LlamaForCausalLM.from_pretrained` and `llava_mini.loading.weights.load_llama` both read it.

- Hidden {z['text_hidden']}, {z['text_layers']} layers, {query_heads(z['text_hidden'])} query heads and {z['text_kv_heads']} key/value heads, vocabulary {stats['vocab_size']}
""" + "".join(llama_run(run, i + 1) for i, run in enumerate(llama_runs)) + f"""
## Quality (held-out scenes)
- Held-out loss on every token of the test scenes' captions and questions: {stats['lm_heldout_loss']:.3f} (held-out
  wordings included; instruction tuning trains the answers only, so the other tokens are predicted less well)
- The text-only premise (`python -m llava_mini.eval.text_qa --llm weights/tiny/tiny-llama`): the held-out short-answer
  questions answered from the scene in words, {qa['overall']:.1%} (n={qa['n']}); """ +
        ", ".join(f"{k} phrasings {v:.1%}" for k, v in qa["per_phrasing"].items()) + "; per type " +
        ", ".join(f"{k} {v:.1%}" for k, v in qa["per_type"].items()) + "\n",
    }
    for name, card in cards.items():
        with open(os.path.join(out_dir, name, "README.md"), "w") as f:
            f.write(card)
    write_manifest(out_dir)


def clip_run(record: dict, number: int) -> str:
    """One make_tiny run's share of the CLIP: its steps, batch and rate, then how it was run (provenance)."""
    z = record["sizes"]
    scenes = f", on the train scenes and {z['clip_scenes']} new ones" if z.get("clip_scenes") else ""
    weight = record.get("patch_weight")
    patches = f", every patch alone too (per-patch weight {weight})" if weight else ""
    return (f"- Run {number}: {z['clip_steps']} steps of batch {z['clip_batch']}, lr {z['clip_lr']}{scenes}"
            f"{patches}\n" +
            "".join("  " + line for line in provenance(record).splitlines(keepends=True)))


def llama_run(record: dict, number: int) -> str:
    """One make_tiny run's share of the LLaMA: its phases' steps, then how it was run (provenance)."""
    z = record["sizes"]
    phases = [f"{name} {z.get(key, 0)} steps" for name, key in (("pretraining", "lm_steps"),
                                                               ("instruction tuning", "sft_steps"),
                                                               ("lookup drill", "lookup_steps"),
                                                               ("binding drill", "binding_steps")) if z.get(key, 0)]
    drill = f" ({z['lookup_scenes']} new scenes)" if z.get("lookup_steps") or z.get("binding_steps") else ""
    if z.get("binding_steps"):
        drill += f"; the binding drill {z['binding_batch']} samples a step, its rate held until the last fifth"
    widened = record.get("kv_heads_widened_from")
    widen = (f"{widened} key/value head(s) widened to {z['text_kv_heads']}, each repeated for the query heads that "
             f"shared it (the same function); " if widened else "")
    train = (f"{', '.join(phases)}{drill}; batches of {z['lm_batch']} samples packed into rows of {z['lm_block']} "
             f"tokens, lr {z['lm_lr']}" if phases else "no training steps")
    return (f"- Run {number}: {widen}{train}\n" +
            "".join("  " + line for line in provenance(record).splitlines(keepends=True)))


def provenance(record: dict) -> str:
    """How a base was made (the command, the world, the machine, the text), from make_tiny's record of that run."""
    text = record["training_text"]
    return (f"- Command: `{record['command']}`, seed {record['seed']}, on the world of "
            f"`python -m llava_mini.synth.world --out data/shapes --train 5000 --test 500` and "
            f"`python -m llava_mini.synth.easyvqa --out data/easyvqa`\n"
            f"- Made in {record['seconds'] / 60:.1f} min on {record['machine']} ({record['processes']} processes)\n"
            f"- Training text: {text['texts']} texts of the shapes world (train scenes only), sha256 "
            f"`{text['sha256'][:16]}...`, {len(text['words'])} distinct words (all in `{BASES_REPORT}`); no held-out "
            f"phrasing and no test scene is in it\n")


def machine() -> str:
    """Where the bases were made, for their model cards."""
    return (f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
