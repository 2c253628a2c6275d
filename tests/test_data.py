"""Images, LLaVA-JSON datasets, bad data, truncation, collate and packing."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from llava_mini.data.conversation import IGNORE_INDEX, tokenize_conversation
from llava_mini.data.dataset import LengthGroupedBatchSampler, LlavaDataset, collate, expanded_length, pack, pack_groups
from llava_mini.data.images import load_image, preprocess_image
from llava_mini.data.tokenizer import Tokenizer
from llava_mini.model.config import LlavaConfig, TextConfig, VisionConfig


@pytest.fixture(scope="module")
def tok(llama_tokenizer_json):
    return Tokenizer.from_file(llama_tokenizer_json)


# ---------------------------------------------------------------------------------------------------------------
# Images

def test_load_image_any_mode(tmp_path):
    def roundtrip(im, name, **kw):
        im.save(tmp_path / name, **kw)
        out = load_image(str(tmp_path / name))
        assert out.mode == "RGB"
        return np.asarray(out)

    assert roundtrip(Image.new("L", (4, 3), 77), "l.png")[0, 0].tolist() == [77, 77, 77]
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))                  # fully transparent -> the white background
    a = roundtrip(rgba, "rgba.png")
    assert a[0, 0].tolist() == [255, 255, 255] and a[1, 1].tolist() == [255, 0, 0]
    assert roundtrip(Image.new("LA", (2, 2), (0, 0)), "la.png")[0, 0].tolist() == [255, 255, 255]
    p = Image.new("P", (2, 2), 1)
    p.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.info["transparency"] = 0                           # palette index 0 is transparent
    a = roundtrip(p, "p.png", transparency=0)
    assert a[0, 0].tolist() == [255, 255, 255] and a[1, 1].tolist() == [0, 0, 255]
    assert np.abs(roundtrip(Image.new("CMYK", (2, 2), (0, 255, 255, 0)), "c.jpg").astype(int)[0, 0]
                  - [255, 0, 0]).max() < 8                # CMYK red
    sixteen = Image.fromarray(np.array([[0, 32896], [65535, 65535]], dtype=np.uint16))   # 16-bit grey
    a = roundtrip(sixteen, "g16.png")
    assert a[0, 0, 0] == 0 and a[0, 1, 0] == 128 and a[1, 1, 0] == 255   # scaled, not clipped at 255


def test_exif_orientation(tmp_path):
    im = Image.new("RGB", (6, 2), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6                                     # "rotate 90° clockwise to view"
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(str(tmp_path / "rot.jpg")).size == (2, 6)


def test_bad_image_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(str(tmp_path / "missing.png"))
    (tmp_path / "text.png").write_text("hello, not an image")
    with pytest.raises(ValueError, match="text.png"):
        load_image(str(tmp_path / "text.png"))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "f.png")
    data = (tmp_path / "f.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="trunc.png"):
        load_image(str(tmp_path / "trunc.png"))


def test_matches_clip_image_processor():
    """Same pixels as transformers' (PIL-based) CLIPImageProcessor on real photos. Both resize with PIL's bicubic,
    so the max difference measured is 0.0 (astronaut, coffee, chelsea; crop and pad); LLaVA-1.5's pad mode = expand to a square with
    the mean colour, then the same processor."""
    transformers = pytest.importorskip("transformers")
    skimage_data = pytest.importorskip("skimage.data")
    processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 224},
                                                   crop_size={"height": 224, "width": 224})
    vision = VisionConfig(image_size=224)
    worst = 0.0
    for photo in (skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea()):
        image = Image.fromarray(photo)
        ours = preprocess_image(image, vision, aspect="crop")
        ref = processor(images=image, return_tensors="pt")["pixel_values"][0]
        worst = max(worst, (ours - ref).abs().max().item())
        # pad: the reference pads by hand, the way LLaVA's expand2square does
        w, h = image.size
        square = Image.new("RGB", (max(w, h),) * 2, (122, 116, 104))
        square.paste(image, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
        ref_pad = processor(images=square, return_tensors="pt")["pixel_values"][0]
        worst = max(worst, (preprocess_image(image, vision, aspect="pad") - ref_pad).abs().max().item())
        assert ours.shape == (3, 224, 224)
    print(f"max |ours - CLIPImageProcessor| = {worst:.2e}")
    assert worst < 1e-2, worst


# ---------------------------------------------------------------------------------------------------------------
# Datasets

def tiny_config(image_size=32) -> LlavaConfig:
    vision = VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          image_size=image_size, patch_size=8)          # 16 patches -> 16 image tokens
    return LlavaConfig(vision_config=vision, text_config=TextConfig(vocab_size=32001, hidden_size=32))


def write_data(tmp_path, records, name="data.json", images=("a.png", "b.png")):
    for i, img in enumerate(images):
        Image.new("RGB", (40, 30), (i * 100, 50, 200)).save(tmp_path / img)
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    else:
        path.write_text(json.dumps(records))
    return str(path)


def conv(*values):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


GOOD = [
    {"id": "1", "image": "a.png", "conversations": conv("What is it?\n<image>", "A box.", "Colour?", "Blue.")},
    {"id": "2", "conversations": conv("Say hi.", "Hi.")},                     # text-only
    {"id": "3", "image": "b.png", "conversations": conv("Describe.", "Dark.")},   # placeholder missing: added
]


def test_dataset_stage2_and_stage1(tmp_path, tok):
    cfg = tiny_config()
    path = write_data(tmp_path, GOOD)
    ds = LlavaDataset(path, str(tmp_path), tok, "vicuna_v1", cfg)
    s = ds[0]
    assert set(s) == {"id", "input_ids", "labels", "pixel_values", "length"}
    assert s["pixel_values"].shape == (1, 3, 32, 32)
    # the placeholder is moved to the front of the first user turn as "<image>\n"
    ids, labels = tokenize_conversation(tok, ["<image>\nWhat is it?", "A box.", "Colour?", "Blue."], "vicuna_v1")
    assert s["input_ids"].tolist() == ids and s["labels"].tolist() == labels
    assert s["length"] == len(s["input_ids"]) - 1 + 16 == ds.lengths[0]
    assert ds[1]["pixel_values"].shape == (0, 3, 32, 32) and (ds[1]["input_ids"] == 32000).sum() == 0
    assert (ds[2]["input_ids"] == 32000).sum() == 1
    with pytest.raises(ValueError, match="plain' takes one instruction"):     # stage 1 wants image-caption pairs
        LlavaDataset(path, str(tmp_path), tok, "plain", cfg)
    stage1 = LlavaDataset(write_data(tmp_path, GOOD[2:], "stage1.json"), str(tmp_path), tok, "plain", cfg)
    assert stage1[0]["input_ids"].tolist() == [1, 32000] + tok.encode("Dark.\n")   # instruction dropped


@pytest.mark.parametrize("image", ["../outside.png", "/etc/passwd", "sub/../../outside.png"])
def test_an_image_path_may_not_leave_the_image_root(tmp_path, tok, image):
    (tmp_path / "outside.png").write_bytes(b"")
    root = tmp_path / "root"
    root.mkdir()
    path = write_data(root, [{"id": "escape", "image": image, "conversations": conv("<image>\nQ", "A")}])
    with pytest.raises(ValueError, match=f"sample escape: image: '{re.escape(image)}' points outside"):
        LlavaDataset(path, str(root), tok, "vicuna_v1", tiny_config())


def test_jsonl_and_bad_data(tmp_path, tok, capsys):
    cfg = tiny_config()
    bad = [
        json.dumps(GOOD[0]),
        '{"id": "broken", "conversations": [',                                                   # malformed line
        json.dumps({"id": "nofile", "image": "zzz.png", "conversations": conv("<image>\nQ", "A")}),
        json.dumps({"id": "alt", "conversations": conv("Q", "A")[:1] + conv("Q", "A")[:1] + conv("Q", "A")[1:]}),
        json.dumps({"id": "two", "image": "a.png", "conversations": conv("<image> and <image>", "A")}),
    ]
    path = write_data(tmp_path, bad, name="data.jsonl")
    with pytest.raises(ValueError, match=r"data.jsonl:2"):
        LlavaDataset(path, str(tmp_path), tok, "vicuna_v1", cfg)
    bad.append(json.dumps(["not", "an", "object"]))
    for i, pattern in [(2, "zzz.png"), (3, "sample alt: turn 1 should be from 'gpt'"), (4, "sample two: 2 <image>"),
                       (5, "must be a JSON object")]:
        one = write_data(tmp_path, [bad[i]], name=f"one{i}.jsonl")
        with pytest.raises((ValueError, FileNotFoundError), match=pattern):
            LlavaDataset(one, str(tmp_path), tok, "vicuna_v1", cfg)
    ds = LlavaDataset(path, str(tmp_path), tok, "vicuna_v1", cfg, skip_bad=True)
    assert len(ds) == 1 and sum(ds.skipped.values()) == 4
    assert ds.skipped == {"malformed JSON line": 1, "missing image": 1, "malformed sample": 2}
    assert "skipped 4 samples" in capsys.readouterr().err


def test_broken_image_at_load_time(tmp_path, tok, capsys):
    path = write_data(tmp_path, GOOD[:1])
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="sample 1: .*a.png"):
        LlavaDataset(path, str(tmp_path), tok, "vicuna_v1", tiny_config())[0]
    ds = LlavaDataset(path, str(tmp_path), tok, "vicuna_v1", tiny_config(), skip_bad=True)
    assert ds[0] is None and ds.skipped == {"bad image": 1}
    assert "skipping sample 1" in capsys.readouterr().err


def test_truncation(tmp_path, tok):
    cfg = tiny_config()
    path = write_data(tmp_path, GOOD[:1])
    full = LlavaDataset(path, str(tmp_path), tok, "vicuna_v1", cfg)[0]
    cut = LlavaDataset(path, str(tmp_path), tok, "vicuna_v1", cfg, max_length=full["length"] - 3)[0]
    assert cut["length"] == full["length"] - 3
    assert torch.equal(cut["input_ids"], full["input_ids"][:-3]) and torch.equal(cut["labels"], full["labels"][:-3])
    # The image sits around token 36 of the prompt; a limit inside it is an error, never a cut image.
    with pytest.raises(ValueError, match="sample 1: max_length 40 cuts through its image"):
        LlavaDataset(path, str(tmp_path), tok, "vicuna_v1", cfg, max_length=40)
    # Long enough for the image but not for any answer token: reported.
    first_answer = int((full["labels"] != IGNORE_INDEX).nonzero()[0]) + 15    # +15: image expansion
    with pytest.raises(ValueError, match="no trained token left"):
        LlavaDataset(path, str(tmp_path), tok, "vicuna_v1", cfg, max_length=first_answer)
    ds = LlavaDataset(path, str(tmp_path), tok, "vicuna_v1", cfg, max_length=first_answer, skip_bad=True)
    assert len(ds) == 0 and ds.skipped == {"no trained token left": 1}


# ---------------------------------------------------------------------------------------------------------------
# Batches

def make_sample(i, ids, n_images=0):
    ids = torch.tensor(ids)
    labels = ids.clone()
    labels[: len(ids) // 2] = IGNORE_INDEX
    return {"id": str(i), "input_ids": ids, "labels": labels, "pixel_values": torch.full((n_images, 3, 4, 4), float(i)),
            "length": expanded_length(ids, 32000, 4)}


def test_collate_and_pack_layout():
    samples = [make_sample(0, [1, 5, 6, 7, 8, 9]), make_sample(1, [1, 32000, 4], 1), make_sample(2, [1, 32000, 3, 3], 1)]
    assert [s["length"] for s in samples] == [6, 6, 7]
    batch = collate(samples + [None], pad_id=0)
    assert batch["input_ids"].shape == (3, 6) and batch["ids"] == ["0", "1", "2"]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0]
    assert batch["labels"][1, 3:].tolist() == [IGNORE_INDEX] * 3 and batch["pixel_values"].shape == (2, 3, 4, 4)
    # first fit, longest first: 2 (7) opens row 0, 0 (6) fits beside it, 1 (6) opens row 1; a row keeps data order
    packed = pack(samples, max_length=13, pad_id=0)
    assert packed["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]]
    assert packed["input_ids"][0].tolist() == [1, 5, 6, 7, 8, 9, 1, 32000, 3, 3]
    assert packed["labels"][0, 6].item() == IGNORE_INDEX        # a sample's first token is never a target
    assert packed["ids"] == ["0", "2", "1"]
    # images follow the placeholders, row by row
    assert packed["pixel_values"][:, 0, 0, 0].tolist() == [2.0, 1.0]
    assert pack_groups([5, 5, 5, 9], 10) == [[3], [0, 1], [2]]
    with pytest.raises(ValueError, match="length 11 > max_length 10"):
        pack_groups([11], 10)


def per_sample_token_losses(out, batch) -> dict:
    """{sample id: [loss of each trained token, in order]} from a forward pass (expanded logits and labels)."""
    logp = torch.log_softmax(out.logits[:, :-1].double(), dim=-1)              # position t predicts t + 1
    targets, segments = out.labels[:, 1:], out.attention_mask[:, 1:]
    ids, losses = iter(batch["ids"]), {}
    for row in range(targets.shape[0]):
        for seg in range(1, int(segments[row].max()) + 1):                     # samples in row order
            at = ((segments[row] == seg) & (targets[row] != IGNORE_INDEX)).nonzero().flatten()
            losses[next(ids)] = (-logp[row, at, targets[row, at]]).tolist()
    return losses


def test_pack_and_pad_give_same_loss(tok):
    """A packed batch and the same samples padded (some with an image): the same loss on every trained token
    (to 1e-6), hence the same mean loss and gradients. Packing must keep samples apart, restart positions and keep images in order."""
    from llava_mini.model.llava import LlavaForConditionalGeneration
    torch.manual_seed(0)
    convs = [["Hi", "Hello there."], ["<image>\nWhat is two plus two?", "Four.", "And three?", "Five... no, six."],
             ["Name a colour.", "Blue."], ["<image>\nWhy is the sky blue?", "Rayleigh scattering of sunlight."]]
    samples = []
    for i, turns in enumerate(convs):
        ids, labels = tokenize_conversation(tok, turns, "vicuna_v1", str(i))
        n_images = turns[0].count("<image>")
        samples.append({"id": str(i), "input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                        "pixel_values": torch.randn(n_images, 3, 32, 32), "length": expanded_length(ids, 32000, 16)})
    cfg = tiny_config()
    cfg.text_config = TextConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = LlavaForConditionalGeneration(cfg).double().eval()
    padded = collate(samples, tok.pad_id)
    packed = pack(samples, max_length=160, pad_id=tok.pad_id)
    assert packed["input_ids"].shape[0] < len(samples)            # really packed
    assert packed["ids"] != padded["ids"]                          # and reordered, so image order matters
    with torch.no_grad():
        out_pad, out_pack = (model(b["input_ids"], b["pixel_values"].double(), b["attention_mask"], b["labels"])
                             for b in (padded, packed))
    pad_losses, pack_losses = per_sample_token_losses(out_pad, padded), per_sample_token_losses(out_pack, packed)
    assert set(pad_losses) == {"0", "1", "2", "3"} and pad_losses.keys() == pack_losses.keys()
    for sample_id, losses in pad_losses.items():
        assert len(losses) == len(pack_losses[sample_id]) > 0
        assert max(abs(a - b) for a, b in zip(losses, pack_losses[sample_id])) < 1e-6, sample_id
    assert abs(out_pad.loss.item() - out_pack.loss.item()) < 1e-6
    grads = []                                                     # and so the same gradients
    for b in (padded, packed):
        model.zero_grad()
        model(b["input_ids"], b["pixel_values"].double(), b["attention_mask"], b["labels"]).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].shape == grads[1].shape and (grads[0] - grads[1]).abs().max() < 1e-9


def test_length_grouped_sampler():
    lengths = [5, 50, 6, 49, 7, 48, 8, 47]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=2, seed=1, group=4)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(8)) and len(sampler) == 4
    for b in batches:      # with one mega-batch the long ones pair up with long ones
        assert max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 2
    assert list(LengthGroupedBatchSampler(lengths, batch_size=2, seed=1, group=4)) == batches   # reproducible
    assert len(LengthGroupedBatchSampler(lengths, batch_size=3, drop_last=True)) == 2
    # each epoch has its own order, the same whenever it is asked for again (the loop asks every step, and a
    # resumed run jumps straight to its epoch)
    sampler.set_epoch(1)
    epoch1 = sampler.batches()
    assert epoch1 != batches and sorted(i for b in epoch1 for i in b) == list(range(8))
    sampler.set_epoch(0)
    assert sampler.batches() == batches
    fresh = LengthGroupedBatchSampler(lengths, batch_size=2, seed=1, group=4)
    fresh.set_epoch(1)
    assert fresh.batches() == epoch1
