"""Stage 0: train the tiny stand-in bases that LLaVA starts from, because no pretrained CLIP or LLaMA can be
downloaded here. The repository ships the result in weights/tiny (its model cards give the exact command); the
default pipeline starts from those, and `python train.py --make-bases` runs this instead.

    python weights/make_tiny.py                                   # data/shapes -> checkpoints/base/{tiny-clip,tiny-llama}
    python weights/make_tiny.py --out weights/tiny --extra-text data/easyvqa/easyvqa_train.json   # remake the shipped ones
    python weights/make_tiny.py --clip-steps 500 --lm-steps 100 --sft-steps 100   # quicker, weaker
    python weights/make_tiny.py --out weights/tiny --keep-clip weights/tiny/tiny-clip ...   # remake only the LLM
    python weights/make_tiny.py --keep-clip weights/tiny/tiny-clip --init-llama weights/tiny/tiny-llama \
        --lm-steps 0 --sft-steps 0 --lookup-steps 1500 --out /tmp/more   # go on training a made LLM: the drill only
    python weights/make_tiny.py --init-clip weights/tiny/tiny-clip --keep-llama weights/tiny/tiny-llama \
        --clip-steps 6000 --out /tmp/more                            # go on training a made CLIP; keep the LLM
    torchrun --standalone --nproc_per_node 2 weights/make_tiny.py --threads 1   # 2 processes share each batch (gloo)

It makes three things, in the order LLaVA's bases were made (on a much smaller scale):
1. a BPE tokenizer shaped like LLaMA's (`<unk>`=0, `<s>`=1, `</s>`=2, 256 byte-fallback tokens, "▁" for spaces),
   with `<image>` added as a special token at the end of the vocabulary (weights/tiny_tokenizer.py);
2. a tiny CLIP (vision + text tower), trained contrastively on the shapes world's image-caption pairs and on
   object-phrase pairs (each object's patches against "small red star at the top left", pooled and each patch
   alone; see train_clip for why);
3. a tiny LLaMA, trained on the world's text without images: pretraining on every token of the captions and the
   stage-2 conversations (the scene in words where the image will be), then instruction tuning on those
   conversations with the loss on the answers only (like Vicuna, it chats before it ever sees an image), then a
   lookup drill: the same chats and as many short-answer chats about new scenes that exist only in words
   (world_text.lookup_chats), so that it learns to look an object up in a scene it has never read
   (weights/tiny_llama.py: its samples, the loop over the phases, its config). `--binding-steps N` adds a
   binding drill (world_text.binding_texts), off by default: docs/EXPERIMENTS.md (2026-12-07 (afternoon)).
Each is written in the Hugging Face layout (config.json, model.safetensors, tokenizer.json) through the same
weights.save_* functions, so the real loaders read them exactly as they read openai/clip-vit-large-patch14 or Vicuna.
It prints and writes (make_tiny.json, a model card per folder, SHA256SUMS) the tiny CLIP's retrieval accuracy and
tower probes, and the tiny LM's held-out loss and text-only answers: both are real models, just small.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import shutil
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tokenizers import Tokenizer as HFTokenizer
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from anywhere

from llava_mini import cli  # noqa: E402
from llava_mini.data.tokenizer import Tokenizer  # noqa: E402
from llava_mini.eval.text_qa import text_qa  # noqa: E402
from llava_mini.jsonio import read_json, write_json  # noqa: E402
from llava_mini.loading import weights  # noqa: E402
from llava_mini.model.clip import CLIPModel, clip_loss  # noqa: E402
from llava_mini.model.config import CLIPConfig, CLIPTextConfig, VisionConfig  # noqa: E402
from llava_mini.training.distributed import barrier, gather_with_grad  # noqa: E402
from llava_mini.training.pipeline import launcher  # noqa: E402
from llava_mini.training.recipes import BASES_REPORT, CLASSROOM, BaseSizes  # noqa: E402
from weights.tiny_clip import (END_OF_TEXT, alone_patches, clip_tokenizer, counterfactual_phrases,  # noqa: E402
                               earlier_clip, encode_captions, kept_clip, load_images, object_regions, phrase_logits,
                               probe_tower, region_accuracy, region_rows, render_images, retrieval_accuracy)
from weights.model_cards import earlier_report, earlier_runs, machine, write_model_cards  # noqa: E402
from weights.base_training import init_weights, optimizer_step, warmup_cosine  # noqa: E402
from weights.tiny_llama import (Phase, lm_loss, lm_samples, pack_text, text_config, train_llama,  # noqa: E402
                                widen_kv_heads)
from weights.tiny_tokenizer import train_tokenizer  # noqa: E402
from weights.world_text import (binding_texts, lookup_chats, new_scenes, read_world_text,  # noqa: E402
                                text_fingerprint)


# ---------------------------------------------------------------------------------------------------------------
# 2. Tiny CLIP

def train_clip(config: CLIPConfig, images: torch.Tensor, scenes: list[dict], tokenizer, *, steps: int,
               batch_size: int, lr: float, seed: int, feature_layer: int = -2, region_weight: float = 1.0,
               patch_weight: float = 1.0, hard_negatives: bool = True, rank: int = 0, world: int = 1,
               model: CLIPModel | None = None) -> CLIPModel:
    """CLIP's contrastive loss on (image, caption) pairs, plus the same loss on (object region, phrase) pairs.

    Why the second term: in a batch of world scenes the colours alone tell the captions apart, so the image-level
    loss is solved without shape or position, and LLaVA's patch features (layer `feature_layer`) then carry colour
    only. Contrasting each object's patches with its phrase ("small red star at the top left"), as region-level
    CLIPs do, puts shape and position into exactly the features the LLM will read. With `hard_negatives` each
    region also competes with its own phrase with the shape swapped and with the position swapped (one random swap of
    each per step, counterfactual_phrases), which a batch rarely supplies; docs/EXPERIMENTS.md has what they change.
    `patch_weight` adds the same term for every patch alone (tiny_clip.region_rows, per_patch): the mean of an
    object's patches may know its shape while no single patch does, and a look-up finds "the star" token by token.

    Under torchrun (`world` processes) every process draws the same global batch from the same seeded generator
    and runs its own slice of the images and of the texts; the features are gathered, so the loss contrasts the
    whole batch, and the summed gradients equal one process's (tests/test_make_tiny.py checks it)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = (model or init_weights(CLIPModel(config))).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, max(1, steps // 20)))
    max_len = config.text_config.max_position_embeddings
    grid = config.vision_config.image_size // config.vision_config.patch_size
    regions = [object_regions(s, grid) for s in scenes]
    if min(batch_size, len(scenes)) % world:
        raise ValueError(f"the CLIP batch ({min(batch_size, len(scenes))}) must split evenly over {world} processes")
    bar = tqdm(range(steps), desc="tiny CLIP", disable=rank != 0)
    for _ in bar:
        # The global batch, drawn the same way by every process; this process runs the slice `mine`.
        idx = rng.sample(range(len(scenes)), min(batch_size, len(scenes)))
        captions = [rng.choice(scenes[i]["captions"]) for i in idx]
        negatives = [p for i in idx for p in counterfactual_phrases(scenes[i], rng)] if hard_negatives else []
        share = len(idx) // world
        mine = slice(rank * share, (rank + 1) * share)
        out = model.vision_model(images[idx[mine]], output_hidden_states=True)
        image = F.normalize(model.visual_projection(out.pooler_output), dim=-1)           # (share, D)
        text = F.normalize(model.get_text_features(*encode_captions(tokenizer, captions[mine], max_len)), dim=-1)
        image, text = gather_with_grad(image, world), gather_with_grad(text, world)      # (B, D) on every process
        image_loss = clip_loss(image @ text.t() * model.logit_scale.exp())               # the same on every process
        loss, losses = image_loss / world, {"image": image_loss}
        # this process's objects (pooled, and each patch alone) against every phrase of the global batch and the
        # hard negatives, the phrases encoded once for both terms
        weights = {"region": region_weight, "patch": patch_weight}
        terms = [t for t, w in weights.items() if w]       # none: the image-caption ablation, which skips it all
        mine_regions = [regions[i] for i in idx[mine]]
        others = [p for i in idx for p in regions[i][1]] if world > 1 else []
        rows = [region_rows(model, out.hidden_states[feature_layer], mine_regions, per_patch=t == "patch")
                for t in terms]
        scored = phrase_logits(model, tokenizer, max_len, mine_regions, rows, others + negatives, rank, world) \
            if terms else []
        for term, (logits, targets) in zip(terms, scored):
            # the global batch's count of rows, so that the processes' shares sum to the batch's mean
            n = sum(len(regions[i][1]) if term == "region" else int(alone_patches(regions[i][0]).sum()) for i in idx)
            term_loss = F.cross_entropy(logits, targets, reduction="sum") / n              # this process's share
            loss = loss + weights[term] * term_loss
            losses[term] = term_loss * n / max(1, len(targets))                            # this process's mean
        optimizer_step(model, opt, sched, loss, world)
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()})
    return model.eval()


def make_clip(z: BaseSizes, tokenizer: Tokenizer, hf_tok: HFTokenizer, data_dir: str, scenes: list[dict], *,
              seed: int, rank: int, world: int, model: CLIPModel | None = None, clip_tok: HFTokenizer | None = None,
              **train_options) -> tuple[CLIPModel, HFTokenizer]:
    """A tiny CLIP of the sizes `z`, trained on `scenes` (data_dir's) and z.clip_scenes new ones (train_clip), from
    scratch or on from `model` with its `clip_tok`; returns it and its text tower's tokenizer.

    Why new scenes: the world's 5,000 train images are what stage 1 and 2 learn from, but a CLIP is pretrained on
    far more images than LLaVA ever tunes on. On the 5,000 alone the tower learns them by heart (its region loss
    falls towards 0) while its shape read of held-out scenes stalls (docs/EXPERIMENTS.md, 2026-12-06 (late night))."""
    if model is not None:
        config = model.config
    else:
        clip_tok = clip_tokenizer(hf_tok)
        eot = clip_tok.token_to_id(END_OF_TEXT)
        text_tower = CLIPTextConfig(vocab_size=clip_tok.get_vocab_size(), hidden_size=z.vision_hidden,
                                    intermediate_size=4 * z.vision_hidden, num_hidden_layers=2,
                                    num_attention_heads=max(1, z.vision_hidden // 32), max_position_embeddings=64,
                                    projection_dim=z.vision_hidden, pad_token_id=eot,
                                    bos_token_id=tokenizer.bos_id, eos_token_id=eot)
        config = CLIPConfig(vision_config=vision_config(z), text_config=text_tower, projection_dim=z.vision_hidden)
    clip = train_clip(config, *clip_data(z, data_dir, scenes, config.vision_config, seed), clip_tok,
                      steps=z.clip_steps, batch_size=z.clip_batch, lr=z.clip_lr, seed=seed, rank=rank, world=world,
                      model=model, **train_options)
    return clip, clip_tok


def clip_data(z: BaseSizes, data_dir: str, scenes: list[dict], vision, seed: int) -> tuple[torch.Tensor, list]:
    """The CLIP's (images, scenes): `scenes` loaded from data_dir, then z.clip_scenes new ones rendered in memory."""
    extra = new_scenes(z.clip_scenes, seed, "clip")
    images = load_images(data_dir, scenes, vision)
    return (torch.cat([images, render_images(extra, vision)]) if extra else images), scenes + extra


# ---------------------------------------------------------------------------------------------------------------
# The tiny CLIP's vision tower, from the classroom's BaseSizes (the LLaMA's: tiny_llama.text_config)

def vision_config(z: BaseSizes) -> VisionConfig:
    """A ViT shaped like CLIP's, at classroom size: 64 px images in 8 px patches -> 64 image tokens, heads of 32."""
    return VisionConfig(hidden_size=z.vision_hidden, intermediate_size=4 * z.vision_hidden,
                        num_hidden_layers=z.vision_layers, num_attention_heads=max(1, z.vision_hidden // 32),
                        image_size=z.image_size, patch_size=z.patch_size, projection_dim=z.vision_hidden)


# ---------------------------------------------------------------------------------------------------------------

def make_tiny(data_dir: str = "data/shapes", out_dir: str = "checkpoints/base", extra_text: list[str] = (), *,
              region_weight: float = 1.0, patch_weight: float = 1.0, hard_negatives: bool = True, seed: int = 0,
              command: str | None = None, keep_clip: str | None = None, init_clip: str | None = None,
              keep_llama: str | None = None, init_llama: str | None = None, **sizes) -> dict:
    """Make tokenizer, tiny CLIP and tiny LLaMA; write them to {out_dir}/tiny-clip and {out_dir}/tiny-llama, and
    the measurements (retrieval accuracy, LM loss) to {out_dir}/make_tiny.json; returns them as a dict. `sizes`
    overrides fields of the classroom's BaseSizes (llava_mini/training/recipes.py), e.g. clip_steps=500.
    `keep_clip` / `keep_llama`: a tiny-clip / tiny-llama folder that an earlier make_tiny wrote, used as it is
    (measured again; its model card keeps how it was made). A kept LLaMA brings its tokenizer.
    `init_clip` / `init_llama`: such a folder to go on training, with its tokenizer and sizes; its model card lists
    every run that trained it (`clip_made`, `llama_made`: the runs before this one). A `text_kv_heads` above the
    LLaMA's own widens it first (tiny_llama.widen_kv_heads: the same function, each query head its own keys).
    Under torchrun the processes share each global batch (train_clip, train_llama); the first one measures and
    writes, the others return None."""
    t0 = time.time()
    z = dataclasses.replace(CLASSROOM.bases, **sizes)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    text = read_world_text(data_dir, list(extra_text))
    if (keep_clip and init_clip) or (keep_llama and init_llama):
        raise ValueError("keep a base or go on training it, not both "
                         "(--keep-clip/--init-clip, --keep-llama/--init-llama)")
    llama, llama_made, llama_source, widened_from = None, [], init_llama or keep_llama, None
    if llama_source:        # a LLaMA an earlier make_tiny wrote, with its tokenizer: kept, or trained on
        flag = "--init-llama" if init_llama else "--keep-llama"
        llama_made = earlier_runs(earlier_report(llama_source, flag), "llama")
        llama = weights.load_llama(llama_source).train()
        if init_llama and z.text_kv_heads > llama.config.num_key_value_heads:   # more key/value heads, same function
            widened_from = llama.config.num_key_value_heads
            llama = widen_kv_heads(llama, z.text_kv_heads)
        z = dataclasses.replace(z, text_hidden=llama.config.hidden_size, text_layers=llama.config.num_hidden_layers,
                                text_kv_heads=llama.config.num_key_value_heads)
    os.makedirs(out_dir, exist_ok=True)
    clip_dir, clip_made = os.path.join(out_dir, "tiny-clip"), []
    if keep_clip:           # --keep-clip: remake only the LLM, with the CLIP an earlier make_tiny wrote, as it is
        clip, clip_tok, clip_made = kept_clip(keep_clip, clip_dir, z, rank)
    elif init_clip:         # --init-clip: go on training a CLIP an earlier make_tiny wrote
        clip, clip_tok, clip_made = earlier_clip(init_clip, z, "--init-clip")
        vision = clip.config.vision_config
        z = dataclasses.replace(z, vision_hidden=vision.hidden_size, vision_layers=vision.num_hidden_layers)
    tok_path = os.path.join(out_dir, "tokenizer.json")
    if rank == 0:
        if llama_source:
            shutil.copyfile(os.path.join(llama_source, "tokenizer.json"), tok_path)
        else:
            train_tokenizer(text["text"], z.vocab_size).save(tok_path)
    barrier(world)                                    # the others read the tokenizer the first process wrote
    hf_tok = HFTokenizer.from_file(tok_path)
    tokenizer = Tokenizer.from_file(tok_path)
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"tokenizer: {tokenizer.vocab_size} tokens (<image> = {tokenizer.image_token_id}), "
        f"trained on {len(text['text'])} texts")

    # --- CLIP (unless kept)
    if not keep_clip:
        clip, clip_tok = make_clip(z, tokenizer, hf_tok, data_dir, text["train_scenes"], seed=seed, rank=rank,
                                   world=world, model=clip if init_clip else None,
                                   clip_tok=clip_tok if init_clip else None, region_weight=region_weight,
                                   patch_weight=patch_weight, hard_negatives=hard_negatives)
    stats = None
    if rank == 0:
        test_images = load_images(data_dir, text["test_scenes"], clip.config.vision_config)
        pool = min(100, len(text["test_scenes"]))
        max_len = clip.config.text_config.max_position_embeddings
        retrieval = retrieval_accuracy(clip, test_images, text["test_scenes"], clip_tok, max_len, pool=pool)
        objects = region_accuracy(clip, test_images, text["test_scenes"], clip_tok, max_len, pool=pool)
        print(f"tiny CLIP: zero-shot image->caption retrieval on held-out scenes, top-1 among {pool}: "
              f"{retrieval:.1%} (chance {1 / pool:.1%}); object->phrase retrieval {objects:.1%}")
        if not keep_clip:
            clip_tok_path = os.path.join(out_dir, "clip-tokenizer.json")
            clip_tok.save(clip_tok_path)
            weights.save_clip(clip, clip_dir)
            os.replace(clip_tok_path, os.path.join(clip_dir, "tokenizer.json"))
        stats = {"clip_retrieval_top1": retrieval, "clip_retrieval_pool": pool, "clip_region_top1": objects,
                 "clip_made": clip_made, "clip_kept": bool(keep_clip),
                 "llama_made": llama_made, "llama_kept": bool(keep_llama)}

    # --- LLaMA: pretraining on all the world's text, instruction tuning on its chats (answers only), the lookup
    # drill, the binding drill
    llama_config = llama.config if llama else text_config(z, tokenizer)
    steps = {"pretraining": z.lm_steps, "instruction tuning": z.sft_steps, "lookup drill": z.lookup_steps,
             "binding drill": z.binding_steps}

    # the short-answer chats about new scenes that both drills read, written once
    drills = (z.lookup_steps or z.binding_steps) and not keep_llama
    drill = lookup_chats(new_scenes(z.lookup_scenes, seed), seed) if drills else []

    def phase(name: str, n: int) -> Phase:
        if name == "pretraining":
            return Phase(name, lm_samples(tokenizer, text["captions"], text["chats"], False, z.lm_block), n, z.lm_batch)
        if name == "binding drill":      # three listed scenes with their facts to each short-answer chat, rate held
            facts = binding_texts(3 * len(drill), seed)
            return Phase(name, lm_samples(tokenizer, [], drill, True, z.lm_block, prefixed=facts), n, z.binding_batch,
                         schedule="wsd")
        chats = text["instructions"] + (drill if name == "lookup drill" else [])
        return Phase(name, lm_samples(tokenizer, [], chats, True, z.lm_block), n, z.lm_batch)

    phases = [phase(name, n) for name, n in steps.items() if n > 0 and not keep_llama]
    llama = train_llama(llama_config, phases, block=z.lm_block, lr=z.lm_lr, seed=seed, rank=rank, world=world,
                        model=llama)
    llama_dir = os.path.join(out_dir, "tiny-llama")
    if rank == 0:
        held_out = lm_loss(llama, pack_text(tokenizer, text["test"], z.lm_block))
        print(f"tiny LLaMA: held-out loss {held_out:.3f} (perplexity {math.exp(held_out):.2f}; "
              f"uniform over the vocabulary would be {math.log(tokenizer.vocab_size):.2f})")
        premise = text_qa(llama, tokenizer, text["test_scenes"], read_json(os.path.join(data_dir, "test.json")))
        print(f"tiny LLaMA: held-out world questions answered from the scene in words, {premise['overall']:.1%} "
              f"(n={premise['n']}; {', '.join(f'{k} phrasings {v:.1%}' for k, v in premise['per_phrasing'].items())})")
        weights.save_llama(llama, llama_dir, tokenizer_json=tok_path)
        os.remove(tok_path)                       # its copy lives in tiny-llama/ (the CLIP's own in tiny-clip/)
        probes = probe_tower(weights.load_clip(clip_dir, vision_only=True), data_dir)
        print("tiny CLIP: linear probes of each held-out object in the layer -2 patch features: " +
              ", ".join(f"{k} {v['probe']:.1%}" for k, v in probes.items()))
        stats.update(lm_heldout_loss=held_out, text_qa={k: premise[k] for k in ("overall", "n", "per_type",
                                                                                "per_phrasing")},
                     tower_probes={k: v["probe"] for k, v in probes.items()}, vocab_size=tokenizer.vocab_size,
                     clip_dir=clip_dir, llama_dir=llama_dir, processes=world, seed=seed, sizes=dataclasses.asdict(z),
                     kv_heads_widened_from=widened_from, patch_weight=0.0 if keep_clip else patch_weight,
                     seconds=round(time.time() - t0, 1), training_text=text_fingerprint(text["text"]),
                     command=command, machine=machine())
        write_json(stats, os.path.join(out_dir, BASES_REPORT))
        write_model_cards(out_dir, stats)
        print(f"wrote {clip_dir} and {llama_dir} in {time.time() - t0:.0f} s" +
              (f" ({world} processes)" if world > 1 else ""))
    barrier(world)                                    # nobody leaves before the files are there
    return stats


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="data/shapes")
    p.add_argument("--out", default="checkpoints/base")
    p.add_argument("--extra-text", nargs="*", default=[], help="more LLaVA-JSON files whose text the LM learns")
    g = p.add_argument_group("sizes (defaults: the classroom's BaseSizes, llava_mini/training/recipes.py)")
    for f in dataclasses.fields(BaseSizes):
        kind = cli.positive_float if f.type in (float, "float") else \
            cli.non_negative_int if f.name.endswith(("_steps", "_scenes")) else cli.positive_int   # 0: skip that part
        g.add_argument("--" + f.name.replace("_", "-"), type=kind,
                       default=getattr(CLASSROOM.bases, f.name))
    p.add_argument("--region-weight", type=cli.non_negative_float, default=1.0,
                   help="weight of the object-phrase term of the CLIP loss (0: image-caption pairs only)")
    p.add_argument("--patch-weight", type=cli.non_negative_float, default=1.0,
                   help="weight of the same term for every patch alone (0: off), so each image token tells its shape")
    p.add_argument("--no-hard-negatives", action="store_true",
                   help="the object-phrase term without the shape- and position-swapped phrases (the ablation)")
    p.add_argument("--keep-clip", metavar="FOLDER", default=None,
                   help="use this tiny-clip folder (made by an earlier make_tiny, e.g. weights/tiny/tiny-clip) as it "
                        "is and train only the tokenizer and the LLaMA")
    p.add_argument("--init-clip", metavar="FOLDER", default=None,
                   help="go on training this tiny-clip folder (made by an earlier make_tiny) for --clip-steps more "
                        "steps, with its tokenizer and sizes")
    p.add_argument("--keep-llama", metavar="FOLDER", default=None,
                   help="use this tiny-llama folder (made by an earlier make_tiny) and its tokenizer as they are; "
                        "with --init-clip, only the CLIP is trained")
    p.add_argument("--init-llama", metavar="FOLDER", default=None,
                   help="go on training this tiny-llama folder (made by an earlier make_tiny) with its tokenizer, "
                        "instead of a new one from scratch; e.g. --lm-steps 0 --sft-steps 0 runs only the drill")
    p.add_argument("--seed", type=cli.non_negative_int, default=0)
    p.add_argument("--threads", type=cli.positive_int, default=None, help="torch threads per process (default: the cores / processes)")
    args = p.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:                     # under torchrun: one process of several; the bases train on the CPU, so gloo
        dist.init_process_group("gloo")
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    make_tiny(args.data, args.out, args.extra_text, region_weight=args.region_weight, patch_weight=args.patch_weight,
              hard_negatives=not args.no_hard_negatives, seed=args.seed, keep_clip=args.keep_clip,
              init_clip=args.init_clip, keep_llama=args.keep_llama, init_llama=args.init_llama,
              command=" ".join([launcher(world), "weights/make_tiny.py", *(argv if argv is not None else sys.argv[1:])]),
              **{f.name: getattr(args, f.name) for f in dataclasses.fields(BaseSizes)})
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    cli.run(main)
