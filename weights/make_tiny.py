"""Stage 0: train the tiny stand-in bases that LLaVA starts from, because no pretrained CLIP or LLaMA can be
downloaded here.

    python weights/make_tiny.py                                   # data/shapes -> checkpoints/base/{tiny-clip,tiny-llama}
    python weights/make_tiny.py --data data/shapes --out checkpoints/base --clip-steps 500 --lm-steps 100   # quicker, weaker
    python weights/make_tiny.py --extra-text data/easyvqa/train.json    # more LLaVA-JSON text for the tokenizer and LM
    torchrun --standalone --nproc_per_node 2 weights/make_tiny.py --threads 1   # 2 processes share each batch (gloo)

It makes three things, in the order LLaVA's bases were made (on a much smaller scale):
1. a BPE tokenizer shaped like LLaMA's (`<unk>`=0, `<s>`=1, `</s>`=2, 256 byte-fallback tokens, "▁" for spaces),
   with `<image>` added as a special token at the end of the vocabulary (weights/tiny_tokenizer.py);
2. a tiny CLIP (vision + text tower), trained contrastively on the shapes world's image-caption pairs and on
   object-phrase pairs (each object's patches against "small red star at the top left"; see train_clip for why);
3. a tiny LLaMA, trained on next-token prediction over the world's text without images: captions and the stage-2
   conversations rendered with the chat template (like Vicuna, it has seen chats before it sees images).
Each is written in the Hugging Face layout (config.json, model.safetensors, tokenizer.json) through the same
weights.save_* functions, so the real loaders read them exactly as they read openai/clip-vit-large-patch14 or Vicuna.
It prints the tiny CLIP's zero-shot image->caption and object->phrase retrieval accuracy and the tiny LM's held-out
loss: both are real models, just small.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tokenizers import Tokenizer as HFTokenizer
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from anywhere

from llava_mini.data.conversation import get_template  # noqa: E402
from llava_mini.data.dataset import shuffled_turns  # noqa: E402
from llava_mini.data.images import load_image, preprocess_image  # noqa: E402
from llava_mini.data.tokenizer import IMAGE_TOKEN, Tokenizer  # noqa: E402
from llava_mini.jsonio import read_json, write_json  # noqa: E402
from llava_mini.loading import weights  # noqa: E402
from llava_mini.model.clip import CLIPModel, clip_loss  # noqa: E402
from llava_mini.model.config import CLIPConfig, CLIPTextConfig, TextConfig, VisionConfig  # noqa: E402
from llava_mini.model.llama import LlamaForCausalLM  # noqa: E402
from llava_mini.training.distributed import barrier, gather_with_grad, sum_gradients  # noqa: E402
from llava_mini.training.recipes import BASES_REPORT, CLASSROOM, BaseSizes  # noqa: E402
from weights.tiny_clip import (END_OF_TEXT, clip_tokenizer, counterfactual_phrases, encode_captions, object_regions,  # noqa: E402
                               region_accuracy, region_logits, retrieval_accuracy)
from weights.tiny_tokenizer import train_tokenizer  # noqa: E402

CHAT_TEMPLATE = "vicuna_v1"           # the LM learns the stage-2 chat format from text alone


# ---------------------------------------------------------------------------------------------------------------
# Reading the world's text

def strip_image(turns: list[dict]) -> list[dict]:
    """The conversation without its image: drop the `<image>` placeholder and the newline that goes with it."""
    return [{**t, "value": t["value"].replace(IMAGE_TOKEN + "\n", "").replace("\n" + IMAGE_TOKEN, "")
             .replace(IMAGE_TOKEN, "").strip()} for t in turns]


def render_chat(turns: list[dict], template, context: str | None = None) -> str:
    """A conversation as chat text without its image. With `context` (the scene in words), the description takes
    the image's place at the start of the first user turn."""
    values = [t["value"] for t in strip_image(turns)]
    if context:
        values[0] = f"{context}\n{values[0]}"
    return "".join(seg.text for seg in template.render(values))


def scene_in_words(scene: dict) -> str:
    """The scene as the LM reads it where the image would be: its captions, one after another."""
    return " ".join(scene["captions"])


def read_world_text(data_dir: str, extra_files: list[str]) -> dict:
    """Training and held-out text for the tokenizer and the LM.

    Train: the train scenes' captions, and every stage-2 conversation preceded by its scene's captions where the
    image would be. So the LM learns to answer questions about a scene described before the question (as Vicuna
    answers about a text in its prompt); LLaVA later replaces that description by image tokens, and stage 1 teaches
    the projector to make image tokens the LM can read the same way. Extra LLaVA-JSON files (easy-VQA) join as
    plain chats. Held out: the test scenes' captions and test questions, in the same form."""
    template = get_template(CHAT_TEMPLATE)
    train_scenes = read_json(os.path.join(data_dir, "scenes_train.json"))
    test_scenes = read_json(os.path.join(data_dir, "scenes_test.json"))
    described = {s["id"]: scene_in_words(s) for s in train_scenes + test_scenes}
    chats = [render_chat(shuffled_turns(e, seed=0)["conversations"] if e["id"].endswith("_vqa") else e["conversations"],
                         template, described.get(e["id"].rsplit("_", 1)[0]))
             for e in read_json(os.path.join(data_dir, "stage2.json"))]
    for path in extra_files:
        chats += [render_chat(e["conversations"], template) for e in read_json(path)]
    held_out = [render_chat([{"from": "human", "value": q["question"]}, {"from": "gpt", "value": q["answer"]}],
                            template, described[q["id"].rsplit("_", 1)[0]])
                for q in read_json(os.path.join(data_dir, "test.json"))]
    return {"train": [c for s in train_scenes for c in s["captions"]] + chats,
            "test": [c for s in test_scenes for c in s["captions"]] + held_out,
            "train_scenes": train_scenes, "test_scenes": test_scenes}


# ---------------------------------------------------------------------------------------------------------------
# 2. Tiny CLIP

def load_images(data_dir: str, scenes: list[dict], vision_config) -> torch.Tensor:
    """All scene images preprocessed once: (N, 3, H, W). The world is small enough to keep in memory."""
    return torch.stack([preprocess_image(load_image(os.path.join(data_dir, s["image"])), vision_config, "crop")
                        for s in tqdm(scenes, desc="images", leave=False)])


def init_weights(model: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """GPT-2 / HF-style initialisation: weights N(0, 0.02), biases 0, norms 1. PyTorch's defaults (N(0, 1) for
    embeddings) would start a tied LM with huge logits and a loss far above log(vocab)."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv2d)):
            torch.nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                torch.nn.init.zeros_(m.bias)
    for name, p in model.named_parameters():
        if name.endswith("class_embedding"):
            torch.nn.init.normal_(p, std=std)
    return model


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def optimizer_step(model, opt, sched, loss, world: int = 1) -> None:
    """Backward, sum the gradients over processes (each loss is its process's share), clip the gradient norm to 1,
    step the optimizer and the schedule (both stage-0 loops)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    sum_gradients(model, world)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()


def train_clip(config: CLIPConfig, images: torch.Tensor, scenes: list[dict], tokenizer, *, steps: int,
               batch_size: int, lr: float, seed: int, feature_layer: int = -2, region_weight: float = 1.0,
               hard_negatives: bool = True, rank: int = 0, world: int = 1) -> CLIPModel:
    """CLIP's contrastive loss on (image, caption) pairs, plus the same loss on (object region, phrase) pairs.

    Why the second term: in a batch of world scenes the colours alone tell the captions apart, so the image-level
    loss is solved without shape or position, and LLaVA's patch features (layer `feature_layer`) then carry colour
    only. Contrasting each object's patches with its phrase ("small red star at the top left"), as region-level
    CLIPs do, puts shape and position into exactly the features the LLM will read. With `hard_negatives` each
    region also competes with its own phrase with the shape swapped and with the position swapped (one random swap of
    each per step, counterfactual_phrases), which a batch rarely supplies; docs/EXPERIMENTS.md has what they change.

    Under torchrun (`world` processes) every process draws the same global batch from the same seeded generator
    and runs its own slice of the images and of the texts; the features are gathered, so the loss contrasts the
    whole batch, and the summed gradients equal one process's (tests/test_make_tiny.py checks it)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = init_weights(CLIPModel(config))
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
        if region_weight:                    # 0: the image-caption ablation, which need not compute the term at all
            # this process's objects against every phrase of the global batch (and the hard negatives)
            others = [p for i in idx for p in regions[i][1]] if world > 1 else []
            logits, targets = region_logits(model, out.hidden_states[feature_layer], [regions[i] for i in idx[mine]],
                                            tokenizer, max_len, others + negatives, rank, world)
            n_objects = sum(len(regions[i][1]) for i in idx)
            region = F.cross_entropy(logits, targets, reduction="sum") / n_objects        # this process's share
            loss = loss + region_weight * region
            losses["region"] = region * n_objects / len(targets)                     # this process's mean
        optimizer_step(model, opt, sched, loss, world)
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()})
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# 3. Tiny LLaMA

def pack_text(tokenizer: Tokenizer, texts: list[str], block: int) -> torch.Tensor:
    """Each text as <s> text </s>, all concatenated and cut into blocks of `block` tokens: (n_blocks, block)."""
    stream = []
    for t in texts:
        stream += tokenizer.encode(t, add_bos=True) + [tokenizer.eos_id]
    n = len(stream) // block
    return torch.tensor(stream[:n * block], dtype=torch.long).view(n, block)


def train_llama(config, train_blocks: torch.Tensor, *, steps: int, batch_size: int, lr: float, seed: int,
                rank: int = 0, world: int = 1):
    """Next-token prediction on blocks of the world's text. Under torchrun each process takes its slice of the same
    global batch (every block has the same number of predicted tokens, so the mean is the mean of the slices)."""
    if batch_size % world:
        raise ValueError(f"the LM batch ({batch_size}) must split evenly over {world} processes")
    torch.manual_seed(seed)
    model = init_weights(LlamaForCausalLM(config))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, max(1, steps // 20)))
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="tiny LLaMA", disable=rank != 0)
    share = batch_size // world
    for _ in bar:
        batch = train_blocks[torch.randint(len(train_blocks), (batch_size,), generator=gen)]
        batch = batch[rank * share:(rank + 1) * share]                                    # this process's slice
        loss = model(batch, labels=batch).loss
        optimizer_step(model, opt, sched, loss / world, world)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def lm_loss(model, blocks: torch.Tensor, batch_size: int = 32) -> float:
    losses = [model(blocks[i:i + batch_size], labels=blocks[i:i + batch_size]).loss.item() * len(blocks[i:i + batch_size])
              for i in range(0, len(blocks), batch_size)]
    return sum(losses) / max(1, len(blocks))


# ---------------------------------------------------------------------------------------------------------------
# The bases' architectures, from the classroom's BaseSizes

def vision_config(z: BaseSizes) -> VisionConfig:
    """A ViT shaped like CLIP's, at classroom size: 64 px images in 8 px patches -> 64 image tokens, heads of 32."""
    return VisionConfig(hidden_size=z.vision_hidden, intermediate_size=4 * z.vision_hidden,
                        num_hidden_layers=z.vision_layers, num_attention_heads=max(1, z.vision_hidden // 32),
                        image_size=z.image_size, patch_size=z.patch_size, projection_dim=z.vision_hidden)


def text_config(z: BaseSizes, tokenizer: Tokenizer) -> TextConfig:
    """A LLaMA at classroom size: heads of 32, grouped-query attention (a key/value head per two query heads), the
    SwiGLU width LLaMA uses (8/3 of hidden, rounded up to 64), tied embeddings, the tokenizer's special ids."""
    return TextConfig(vocab_size=tokenizer.vocab_size, hidden_size=z.text_hidden,
                      intermediate_size=int(z.text_hidden * 8 / 3 + 63) // 64 * 64, num_hidden_layers=z.text_layers,
                      num_attention_heads=max(1, z.text_hidden // 32), num_key_value_heads=max(1, z.text_hidden // 64),
                      head_dim=32, max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True,
                      bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)


# ---------------------------------------------------------------------------------------------------------------

def make_tiny(data_dir: str = "data/shapes", out_dir: str = "checkpoints/base", extra_text: list[str] = (), *,
              region_weight: float = 1.0, hard_negatives: bool = True, seed: int = 0, **sizes) -> dict:
    """Make tokenizer, tiny CLIP and tiny LLaMA; write them to {out_dir}/tiny-clip and {out_dir}/tiny-llama, and
    the measurements (retrieval accuracy, LM loss) to {out_dir}/make_tiny.json; returns them as a dict. `sizes`
    overrides fields of the classroom's BaseSizes (llava_mini/training/recipes.py), e.g. clip_steps=500.
    Under torchrun the processes share each global batch (train_clip, train_llama); the first one measures and
    writes, the others return None."""
    t0 = time.time()
    z = dataclasses.replace(CLASSROOM.bases, **sizes)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    text = read_world_text(data_dir, list(extra_text))
    os.makedirs(out_dir, exist_ok=True)
    tok_path = os.path.join(out_dir, "tokenizer.json")
    if rank == 0:
        train_tokenizer(text["train"], z.vocab_size).save(tok_path)
    barrier(world)                                    # the others read the tokenizer the first process wrote
    hf_tok = HFTokenizer.from_file(tok_path)
    tokenizer = Tokenizer.from_file(tok_path)
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"tokenizer: {tokenizer.vocab_size} tokens (<image> = {tokenizer.image_token_id}), "
        f"trained on {len(text['train'])} texts")

    # --- CLIP
    vision = vision_config(z)
    clip_tok = clip_tokenizer(hf_tok)
    eot = clip_tok.token_to_id(END_OF_TEXT)
    text_tower = CLIPTextConfig(vocab_size=clip_tok.get_vocab_size(), hidden_size=z.vision_hidden,
                                intermediate_size=4 * z.vision_hidden, num_hidden_layers=2,
                                num_attention_heads=max(1, z.vision_hidden // 32), max_position_embeddings=64,
                                projection_dim=z.vision_hidden, pad_token_id=eot,
                                bos_token_id=tokenizer.bos_id, eos_token_id=eot)
    clip_config = CLIPConfig(vision_config=vision, text_config=text_tower, projection_dim=z.vision_hidden)
    train_images = load_images(data_dir, text["train_scenes"], vision)
    clip = train_clip(clip_config, train_images, text["train_scenes"], clip_tok, steps=z.clip_steps,
                      batch_size=z.clip_batch, lr=z.clip_lr, seed=seed, region_weight=region_weight,
                      hard_negatives=hard_negatives, rank=rank, world=world)
    stats = None
    clip_dir = os.path.join(out_dir, "tiny-clip")
    if rank == 0:
        test_images = load_images(data_dir, text["test_scenes"], vision)
        pool = min(100, len(text["test_scenes"]))
        retrieval = retrieval_accuracy(clip, test_images, text["test_scenes"], clip_tok,
                                       text_tower.max_position_embeddings, pool=pool)
        objects = region_accuracy(clip, test_images, text["test_scenes"], clip_tok, text_tower.max_position_embeddings,
                                  pool=pool)
        print(f"tiny CLIP: zero-shot image->caption retrieval on held-out scenes, top-1 among {pool}: "
              f"{retrieval:.1%} (chance {1 / pool:.1%}); object->phrase retrieval {objects:.1%}")
        clip_tok_path = os.path.join(out_dir, "clip-tokenizer.json")
        clip_tok.save(clip_tok_path)
        weights.save_clip(clip, clip_dir)
        os.replace(clip_tok_path, os.path.join(clip_dir, "tokenizer.json"))
        stats = {"clip_retrieval_top1": retrieval, "clip_retrieval_pool": pool, "clip_region_top1": objects}

    # --- LLaMA
    llama_config = text_config(z, tokenizer)
    train_blocks = pack_text(tokenizer, text["train"], z.lm_block)
    llama = train_llama(llama_config, train_blocks, steps=z.lm_steps, batch_size=z.lm_batch, lr=z.lm_lr, seed=seed,
                        rank=rank, world=world)
    llama_dir = os.path.join(out_dir, "tiny-llama")
    if rank == 0:
        held_out = lm_loss(llama, pack_text(tokenizer, text["test"], z.lm_block))
        print(f"tiny LLaMA: held-out loss {held_out:.3f} (perplexity {math.exp(held_out):.2f}; "
              f"uniform over the vocabulary would be {math.log(tokenizer.vocab_size):.2f})")
        weights.save_llama(llama, llama_dir, tokenizer_json=tok_path)
        stats.update(lm_heldout_loss=held_out, vocab_size=tokenizer.vocab_size, clip_dir=clip_dir,
                     llama_dir=llama_dir, processes=world, seconds=round(time.time() - t0, 1))
        write_json(stats, os.path.join(out_dir, BASES_REPORT))
        print(f"wrote {clip_dir} and {llama_dir} in {time.time() - t0:.0f} s" +
              (f" ({world} processes)" if world > 1 else ""))
    barrier(world)                                    # nobody leaves before the files are there
    return stats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="data/shapes")
    p.add_argument("--out", default="checkpoints/base")
    p.add_argument("--extra-text", nargs="*", default=[], help="more LLaVA-JSON files whose text the LM learns")
    g = p.add_argument_group("sizes (defaults: the classroom's BaseSizes, llava_mini/training/recipes.py)")
    for f in dataclasses.fields(BaseSizes):
        g.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(CLASSROOM.bases, f.name)),
                       default=getattr(CLASSROOM.bases, f.name))
    p.add_argument("--region-weight", type=float, default=1.0,
                   help="weight of the object-phrase term of the CLIP loss (0: image-caption pairs only)")
    p.add_argument("--no-hard-negatives", action="store_true",
                   help="the object-phrase term without the shape- and position-swapped phrases (the ablation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: the cores / processes)")
    args = p.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:                     # under torchrun: one process of several; the bases train on the CPU, so gloo
        dist.init_process_group("gloo")
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    make_tiny(args.data, args.out, args.extra_text, region_weight=args.region_weight,
              hard_negatives=not args.no_hard_negatives, seed=args.seed,
              **{f.name: getattr(args, f.name) for f in dataclasses.fields(BaseSizes)})
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
