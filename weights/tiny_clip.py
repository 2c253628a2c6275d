"""The tiny CLIP's pairs and checks: what it contrasts, and how we score what it learned.

Used by weights/make_tiny.py (whose train_clip loop runs both losses) and benchmarks/probe_tower.py.
- Text side: the CLIP tokenizer (the LLaMA-style BPE plus its own end-of-text token) and caption encoding.
- Image-caption pairs: CLIP's loss (llava_mini.model.clip.clip_loss) on each scene and one of its captions.
- Object-phrase pairs: each object's patches at the layer LLaVA reads, against "small red star at the top left"
  (why: make_tiny.train_clip and tutorials/07_training.md, section 6).
- Checks on held-out scenes: image->caption and object->phrase retrieval, and linear probes of each object's
  shape, colour and position in the patch features (probe_tower), and one attention head trained to find a named
  object among all the image tokens (probe_lookups, `probe_tower.py --lookup`).
- Scenes the world never wrote, drawn in memory for the CLIP's extra pairs (render_images, `--clip-scenes`).
- A CLIP made earlier, kept as it is while the LLM is remade (kept_clip, `make_tiny.py --keep-clip`), or trained on
  (earlier_clip, `--init-clip`).
"""
from __future__ import annotations

import os
import random
import shutil

import torch
import torch.nn.functional as F
from tqdm import tqdm

from llava_mini.data.images import load_image, preprocess_image
from llava_mini.jsonio import read_json
from llava_mini.loading import weights
from llava_mini.model.clip import CLIPModel, CLIPVisionModel
from llava_mini.synth import world
from llava_mini.synth.teacher import POSITION_NAMES, position_name
from llava_mini.synth.world import SHAPES
from llava_mini.training.distributed import gather_with_grad
from weights.model_cards import earlier_report, earlier_runs

END_OF_TEXT = "<|endoftext|>"         # the tiny CLIP text tower's pooling token (see clip_tokenizer)


def clip_tokenizer(llama_tokenizer):
    """CLIP's text tower gets its own end-of-text token, the last id, as in OpenAI's CLIP (<|endoftext|> = 49407).
    It cannot reuse </s> = 2: HF CLIP configs with eos_token_id == 2 pool at argmax(input_ids), an old quirk that
    only works when the end-of-text token has the largest id."""
    from tokenizers import Tokenizer as HFTokenizer
    tok = HFTokenizer.from_str(llama_tokenizer.to_str())
    tok.add_special_tokens([END_OF_TEXT])
    return tok


def encode_captions(tok, captions: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP text input: <s> caption <|endoftext|>, right-padded with <|endoftext|>; returns (ids, attention_mask),
    both (N, longest <= max_len). The text tower pools the hidden state at the first <|endoftext|>."""
    bos, eot = tok.token_to_id("<s>"), tok.token_to_id(END_OF_TEXT)
    ids = torch.full((len(captions), max_len), eot, dtype=torch.long)
    mask = torch.zeros(len(captions), max_len, dtype=torch.long)
    for i, c in enumerate(captions):
        t = ([bos] + tok.encode(c, add_special_tokens=False).ids + [eot])[:max_len]
        t[-1] = eot
        ids[i, :len(t)] = torch.tensor(t)
        mask[i, :len(t)] = 1
    longest = int(mask.sum(1).max()) if len(captions) else 0
    return ids[:, :longest], mask[:, :longest]           # no columns of padding only: they would cost compute


def object_phrase(size: str, color: str, shape: str, where: str) -> str:
    """"small red star at the top left": what the region term contrasts an object's patches with."""
    return f"{size} {color} {shape} " + ("in the center" if where == "center" else f"at the {where}")


def object_regions(scene: dict, grid: int) -> tuple[torch.Tensor, list[str]]:
    """Each object's patches and its phrase: masks (n_objects, grid*grid), 1 for the patches whose centre lies in
    the object's box (its centre patch if none does), and phrases like "small red star at the top left"."""
    masks = torch.zeros(len(scene["objects"]), grid, grid)
    phrases = []
    for k, o in enumerate(scene["objects"]):
        x0, y0, x1, y1 = (v * grid - 0.5 for v in o["bbox"])   # box in patch-centre coordinates
        rows = [r for r in range(grid) if y0 <= r <= y1] or [min(grid - 1, int(o["center"][1] * grid))]
        cols = [c for c in range(grid) if x0 <= c <= x1] or [min(grid - 1, int(o["center"][0] * grid))]
        masks[k, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = 1
        phrases.append(object_phrase(o["size"], o["color"], o["shape"], position_name(*o["center"], margin=0)))
    return masks.flatten(1), phrases


def counterfactual_phrases(scene: dict, rng: random.Random | None = None) -> list[str]:
    """Hard negatives for the region term: each object's phrase with another shape, and with another position.
    A batch's own phrases mostly differ in colour, which the patches learn first; these differ only in what they
    learn last (as NegCLIP's swapped captions do for word order). With `rng`, one random swap of each kind per
    object instead of all 5 + 8: the text tower's cost grows with the number of distinct phrases."""
    out = []
    for o in scene["objects"]:
        where = position_name(*o["center"], margin=0)
        shapes = [object_phrase(o["size"], o["color"], s, where) for s in SHAPES if s != o["shape"]]
        places = [object_phrase(o["size"], o["color"], o["shape"], w) for w in POSITION_NAMES if w != where]
        out += [rng.choice(shapes), rng.choice(places)] if rng else shapes + places
    return out


def phrase_features(model: CLIPModel, tokenizer, phrases: list[str], max_len: int, rank: int = 0,
                    world: int = 1) -> torch.Tensor:
    """Normalised text features of `phrases`: (n_phrases, D). Under several processes each encodes an equal share
    (the text tower is much of a CLIP step) and they gather, so every process gets all of them, with gradients."""
    share = -(-len(phrases) // world)                                  # ceil
    mine = phrases[rank * share:(rank + 1) * share]
    mine = mine + [phrases[-1]] * (share - len(mine))                  # all_gather wants equal shares; cut below
    features = F.normalize(model.get_text_features(*encode_captions(tokenizer, mine, max_len)), dim=-1)
    return gather_with_grad(features, world)[:len(phrases)]


def alone_patches(masks: torch.Tensor) -> torch.Tensor:
    """object_regions' masks (n_objects, P) with only the patches inside exactly one object's box: a patch in two
    boxes has no single phrase to pick."""
    return masks * (masks.sum(0) == 1)


def region_logits(model: CLIPModel, hidden: torch.Tensor, regions: list, tokenizer, max_len: int,
                  negatives: list[str] = (), rank: int = 0, world: int = 1, per_patch: bool = False):
    """Region-phrase similarities. hidden: (B, 1 + P, H), the layer LLaVA reads; regions[b] = object_regions of
    scene b. Returns (logits (R, n_phrases), targets (R,)): each region (region_rows) should pick its own phrase
    among the batch's and the extra `negatives` (under several processes: also the other processes' phrases, see
    make_tiny.train_clip). `per_patch`: a row per patch (region_rows)."""
    return phrase_logits(model, tokenizer, max_len, regions, [region_rows(model, hidden, regions, per_patch)],
                         negatives, rank, world)[0]


def region_rows(model: CLIPModel, hidden: torch.Tensor, regions: list,
                per_patch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised features (R, D) of each object's region, its patches' mean through the same post-LayerNorm and
    projection as the CLS token, and each row's object (R,) as an index into all of `regions`' objects.

    `per_patch`: every patch inside exactly one object's box is a row of its own instead (R = those patches), so
    that each image token alone must tell its object's phrase. A mean over four patches can name the shape from
    its outline while no single patch knows it; but an attention head that looks for "the star" among the 64
    tokens matches them one by one (benchmarks/probe_tower.py --per-patch measures what one token carries)."""
    masks = torch.cat([alone_patches(m) if per_patch else m for m, _ in regions])        # (R_obj, P)
    owner = torch.cat([torch.full((len(m),), b) for b, (m, _) in enumerate(regions)])    # (R_obj,)
    if per_patch:
        rows, patches = masks.nonzero(as_tuple=True)                      # (R,) each: its object, its patch
        features = hidden[owner[rows], 1 + patches]                       # (R, H)
    else:
        rows = torch.arange(len(masks))
        features = torch.einsum("rp,rph->rh", masks, hidden[owner, 1:]) / masks.sum(1, keepdim=True)   # (R, H)
    return F.normalize(model.visual_projection(model.vision_model.post_layernorm(features)), dim=-1), rows


def phrase_logits(model: CLIPModel, tokenizer, max_len: int, regions: list, row_sets: list, negatives: list[str] = (),
                  rank: int = 0, world: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(logits, targets) for each (features, objects) of `row_sets` (region_rows of `regions`) against the phrases
    of `regions` and `negatives`, which the text tower encodes once for all of them."""
    names = [p for _, ps in regions for p in ps]
    unique = sorted(set(names) | set(negatives))
    text = phrase_features(model, tokenizer, unique, max_len, rank, world)                 # (n_phrases, D)
    position = {p: i for i, p in enumerate(unique)}
    index = torch.tensor([position[p] for p in names], dtype=torch.long)                  # each object's phrase
    return [(features @ text.t() * model.logit_scale.exp(), index[rows]) for features, rows in row_sets]


@torch.no_grad()
def region_accuracy(model: CLIPModel, images: torch.Tensor, scenes: list[dict], tokenizer, max_len: int,
                    feature_layer: int = -2, pool: int = 100) -> float:
    """Zero-shot object->phrase retrieval: does each held-out object's region pick its own phrase among all the
    phrases of `pool` scenes? This is the check that the patch features know shape and position, not just colour."""
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    hits = total = 0
    for start in range(0, len(scenes) - pool + 1, pool):
        hidden = model.vision_model(images[start:start + pool], output_hidden_states=True).hidden_states[feature_layer]
        logits, targets = region_logits(model, hidden, [object_regions(s, grid) for s in scenes[start:start + pool]],
                                        tokenizer, max_len)
        hits += (logits.argmax(1) == targets).sum().item()
        total += len(targets)
    return hits / max(1, total)


@torch.no_grad()
def retrieval_accuracy(model: CLIPModel, images: torch.Tensor, scenes: list[dict], tokenizer, max_len: int,
                       pool: int = 100) -> float:
    """Zero-shot image->caption retrieval: among `pool` held-out scenes' first captions, does each image pick its own?
    Chance is 1/pool."""
    hits = total = 0
    for start in range(0, len(scenes) - pool + 1, pool):
        chunk = scenes[start:start + pool]
        ids, mask = encode_captions(tokenizer, [s["captions"][0] for s in chunk], max_len)
        logits = model(images[start:start + pool], ids, mask)                  # (pool images, pool captions)
        hits += (logits.argmax(dim=1) == torch.arange(len(chunk))).sum().item()
        total += len(chunk)
    return hits / max(1, total)


# ---------------------------------------------------------------------------------------------------------------
# What the tower's patch features know (benchmarks/probe_tower.py)

def load_images(data_dir: str, scenes: list[dict], vision_config) -> torch.Tensor:
    """All scene images preprocessed once: (N, 3, H, W). The world is small enough to keep in memory."""
    return torch.stack([preprocess_image(load_image(os.path.join(data_dir, s["image"])), vision_config, "crop")
                        for s in tqdm(scenes, desc="images", leave=False)])


def render_images(scenes: list[dict], vision_config) -> torch.Tensor:
    """Scenes that were never written (world_text.new_scenes) drawn and preprocessed like load_images': (N, 3, H, W).
    world.render draws the same pixels that the world's PNG files hold."""
    return torch.stack([preprocess_image(world.render(s), vision_config, "crop")
                        for s in tqdm(scenes, desc="new scenes", leave=False)])


@torch.no_grad()
def image_tokens(tower: CLIPVisionModel, images: torch.Tensor, layer: int, encode=None, batch_size: int = 256):
    """Every patch feature of every image, (N, P, hidden): the tower's at `layer`, or `encode`'s."""
    return torch.cat([encode(chunk) if encode else tower.select_features(chunk, layer=layer)
                      for chunk in images.split(batch_size)])


@torch.no_grad()
def object_features(tower: CLIPVisionModel, images: torch.Tensor, scenes: list[dict], layer: int,
                    batch_size: int = 256, encode=None, per_patch: bool = False) -> tuple[torch.Tensor, dict]:
    """Per-object mean patch feature at `layer`: (n_objects, hidden), and labels {attribute: (n_objects,)}.
    `encode` (images -> (B, P, hidden)) replaces the tower's features, e.g. a LLaVA model's projector outputs.
    `per_patch`: every patch inside an object's box is a row of its own, labelled with that object: what one image
    token knows, the key an attention head must match to find "the star" among the 64."""
    grid = tower.config.image_size // tower.config.patch_size
    patches = image_tokens(tower, images, layer, encode, batch_size)                         # (N, P, hidden)
    features, labels = [], {"shape": [], "colour": [], "position": []}
    for b, scene in enumerate(scenes):
        masks, _ = object_regions(scene, grid)                                               # (n_objects, P)
        if per_patch:
            features += [patches[b][m.bool()] for m in masks]                                # (n_inside, hidden) each
            repeats = masks.sum(1).long().tolist()
        else:
            features.append(masks @ patches[b] / masks.sum(1, keepdim=True))                 # (n_objects, hidden)
            repeats = [1] * len(masks)
        for o, n in zip(scene["objects"], repeats):
            labels["shape"] += [world.SHAPES.index(o["shape"])] * n
            labels["colour"] += [list(world.COLORS).index(o["color"])] * n
            labels["position"] += [POSITION_NAMES.index(position_name(*o["center"], margin=0))] * n
    return torch.cat(features), {k: torch.tensor(v) for k, v in labels.items()}


def linear_probe(train_x, train_y, test_x, test_y, n_classes: int, steps: int = 300, seed: int = 0) -> float:
    """Multinomial logistic regression (full-batch Adam on standardised features); returns held-out accuracy."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-5
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    probe = torch.nn.Linear(train_x.shape[1], n_classes)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(train_x), train_y).backward()
        opt.step()
    with torch.no_grad():
        return (probe(test_x).argmax(1) == test_y).float().mean().item()


def variance_shares(x: torch.Tensor, labels: dict) -> dict:
    """Per attribute, the share of the features' total variance that its class means explain (between-class
    variance / total variance, in [0, 1]). Unlike a probe, which standardises every direction, this sees the scale
    the LLM sees: after its RMSNorm a direction that holds 1% of the variance is 1% of the signal."""
    x = x - x.mean(0)                                                                   # (n_objects, hidden)
    total = (x ** 2).sum(1).mean()
    shares = {}
    for name, y in labels.items():
        classes = y.unique()
        means = torch.stack([x[y == c].mean(0) for c in classes])                       # (n_classes, hidden)
        weights = torch.stack([(y == c).float().mean() for c in classes])               # (n_classes,)
        shares[name] = float((weights * (means ** 2).sum(1)).sum() / total)
    return shares


def probe_tower(tower: CLIPVisionModel, data_dir: str, n_train: int = 2000, layer: int = -2, encode=None,
                per_patch: bool = False) -> dict:
    """Per attribute, {"probe": held-out linear-probe accuracy, "share": variance_shares on the held-out objects},
    for the objects of `data_dir`'s scenes (of `encode`'s features if given; each patch alone if `per_patch`; see
    object_features)."""
    train_scenes = read_json(os.path.join(data_dir, "scenes_train.json"))[:n_train]
    test_scenes = read_json(os.path.join(data_dir, "scenes_test.json"))
    tower = tower.eval()
    train_x, train_y = object_features(tower, load_images(data_dir, train_scenes, tower.config), train_scenes, layer,
                                       encode=encode, per_patch=per_patch)
    test_x, test_y = object_features(tower, load_images(data_dir, test_scenes, tower.config), test_scenes, layer,
                                     encode=encode, per_patch=per_patch)
    classes = {"shape": len(world.SHAPES), "colour": len(world.COLORS), "position": len(POSITION_NAMES)}
    shares = variance_shares(test_x, test_y)
    return {k: {"probe": linear_probe(train_x, train_y[k], test_x, test_y[k], n), "share": shares[k]}
            for k, n in classes.items()}


# The look-ups a question asks: the attribute it names (the key) -> the one it asks for. "object" is colour and shape.
LOOKUPS = {"colour of a shape": ("shape", "colour"), "shape of a colour": ("colour", "shape"),
           "place of an object": ("object", "position")}


def lookup_rows(scenes: list[dict], key: str, answer: str) -> list[tuple[int, int, int, int]]:
    """(scene index, key id, answer id, answers the scene offers) for every object whose key no other object of its
    scene shares: "what colour is the star?" has one answer only when the scene has one star."""
    def label(o, attribute):
        if attribute == "object":
            return label(o, "colour") * len(world.SHAPES) + label(o, "shape")
        if attribute == "position":
            return POSITION_NAMES.index(position_name(*o["center"], margin=0))
        return world.SHAPES.index(o["shape"]) if attribute == "shape" else list(world.COLORS).index(o["color"])
    rows = []
    for i, scene in enumerate(scenes):
        keys = [label(o, key) for o in scene["objects"]]
        offered = len({label(o, answer) for o in scene["objects"]})
        rows += [(i, k, label(o, answer), offered) for o, k in zip(scene["objects"], keys) if keys.count(k) == 1]
    return rows


def attention_lookup_probe(train_tokens, train_rows, test_tokens, test_rows, steps: int = 1500, seed: int = 0) -> float:
    """Can one attention head look the answer up in the image tokens (N, P, hidden)? Its query is a learned vector
    per key (the named shape, colour or object: the question's word, given for free), its keys and values linear
    maps of the RMS-normalised tokens (what an LLM layer reads), its softmax over the P tokens, and a linear read-out
    of the answer. Returns the held-out accuracy on the rows whose scene offers two or more answers: picking one of
    them scores the mean of 1 / offered. A linear probe of each object's own patches (probe_tower) says the tokens
    carry an attribute; this says a head can find the named object among all of them by its tokens' content."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n_keys, n_answers = (max(r[j] for r in train_rows + test_rows) + 1 for j in (1, 2))
    hidden, head = train_tokens.shape[-1], 32
    query, key, value = torch.nn.Embedding(n_keys, head), torch.nn.Linear(hidden, head), torch.nn.Linear(hidden, 64)
    readout = torch.nn.Linear(64, n_answers)
    modules = (query, key, value, readout)
    opt = torch.optim.Adam([p for m in modules for p in m.parameters()], lr=3e-3)

    def logits(tokens, rows):
        x = tokens[[r[0] for r in rows]]                                             # (B, P, hidden)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        scores = key(x) @ query(torch.tensor([r[1] for r in rows])).unsqueeze(-1)   # (B, P, 1)
        weights = torch.softmax(scores.squeeze(-1) / head ** 0.5, dim=-1)           # (B, P)
        return readout((weights.unsqueeze(-1) * value(x)).sum(1))                   # (B, n_answers)

    for _ in range(steps):
        batch = [train_rows[i] for i in torch.randint(len(train_rows), (128,), generator=gen).tolist()]
        loss = F.cross_entropy(logits(train_tokens, batch), torch.tensor([r[2] for r in batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    scored = [r for r in test_rows if r[3] >= 2]
    with torch.no_grad():
        return (logits(test_tokens, scored).argmax(-1) == torch.tensor([r[2] for r in scored])).float().mean().item()


def probe_lookups(tower: CLIPVisionModel, data_dir: str, n_train: int = 2000, layer: int = -2, encode=None,
                  steps: int = 1500) -> dict:
    """Per look-up in LOOKUPS, {"head": attention_lookup_probe's held-out accuracy, "picking": what picking one of
    the scene's answers scores, "n": held-out questions}."""
    tokens, rows = {}, {}
    for split, scenes in (("train", read_json(os.path.join(data_dir, "scenes_train.json"))[:n_train]),
                          ("test", read_json(os.path.join(data_dir, "scenes_test.json")))):
        tokens[split] = image_tokens(tower.eval(), load_images(data_dir, scenes, tower.config), layer, encode)
        rows[split] = {name: lookup_rows(scenes, *attributes) for name, attributes in LOOKUPS.items()}
    result = {}
    for name in LOOKUPS:
        scored = [r for r in rows["test"][name] if r[3] >= 2]
        result[name] = {"head": attention_lookup_probe(tokens["train"], rows["train"][name], tokens["test"],
                                                       rows["test"][name], steps),
                        "picking": sum(1 / r[3] for r in scored) / len(scored), "n": len(scored)}
    return result


CLIP_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def earlier_clip(source: str, z, flag: str) -> tuple[CLIPModel, object, list[dict]]:
    """A tiny CLIP that an earlier make_tiny wrote (`flag`: the option that named it, for the errors). Returns it, its
    text tower's tokenizer, and the records of the runs that trained it (earlier_runs), for its model card. `z`:
    the BaseSizes asked for, whose image and patch size the CLIP must have."""
    from tokenizers import Tokenizer as HFTokenizer
    for name in CLIP_FILES:
        if not os.path.isfile(os.path.join(source, name)):
            raise FileNotFoundError(f"{flag} {source}: no {name} there (a tiny-clip folder has "
                                    f"{', '.join(CLIP_FILES)})")
    runs = earlier_runs(earlier_report(source, flag), "clip")
    clip = weights.load_clip(source)
    vision = clip.config.vision_config
    if (vision.image_size, vision.patch_size) != (z.image_size, z.patch_size):
        raise ValueError(f"{flag} {source}: it reads {vision.image_size} px images in {vision.patch_size} px "
                         f"patches, not the {z.image_size} px / {z.patch_size} px asked for")
    return clip, HFTokenizer.from_file(os.path.join(source, "tokenizer.json")), runs


def kept_clip(source: str, clip_dir: str, z, rank: int) -> tuple[CLIPModel, object, list[dict]]:
    """earlier_clip, used as it is: copied to `clip_dir` (by the first process) and returned in eval mode."""
    clip, tokenizer, runs = earlier_clip(source, z, "--keep-clip")
    if rank == 0 and os.path.realpath(source) != os.path.realpath(clip_dir):
        os.makedirs(clip_dir, exist_ok=True)
        for name in CLIP_FILES:
            shutil.copyfile(os.path.join(source, name), os.path.join(clip_dir, name))
    return clip.eval(), tokenizer, runs
