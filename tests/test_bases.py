"""The shipped tiny bases (weights/tiny): they load through the real loaders, match their manifest, know every word
today's world writes, and pass quick quality checks; a corrupted file is refused with its name."""
import os
import re
import shutil

import pytest
import torch
from conftest import ROOT, load_script
from tokenizers import Tokenizer as HFTokenizer

from llava_mini.data.tokenizer import Tokenizer
from llava_mini.eval.text_qa import text_qa
from llava_mini.jsonio import read_json
from llava_mini.loading import weights
from llava_mini.loading.manifest import MANIFEST, ManifestError, folder_files, read_manifest, verify_manifest
from llava_mini.synth import phrasings, world
from llava_mini.training import pipeline
from llava_mini.training.recipes import BASES_REPORT, CLASSROOM

load_script("weights/make_tiny.py")                      # puts the repository root on sys.path
import weights.tiny_clip as tiny_clip  # noqa: E402
import weights.world_text as world_text  # noqa: E402

BASES = os.path.join(ROOT, "weights", "tiny")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A small world with today's code: its test scenes are the classroom's first held-out scenes (each split has
    its own seeded generator), its train text what the bases must know."""
    data = str(tmp_path_factory.mktemp("world") / "shapes")
    world.generate_dataset(data, 60, 40, seed=0, quiet=True)
    return data


def test_manifest_lists_every_file_and_matches():
    assert set(read_manifest(BASES)) == set(folder_files(BASES))
    verify_manifest(BASES)
    size = sum(os.path.getsize(os.path.join(BASES, f)) for f in folder_files(BASES))
    assert size <= 16 * 2 ** 20, f"the shipped bases are {size / 2 ** 20:.1f} MB, the budget is 16 MB"
    for name in ("tiny-clip", "tiny-llama"):
        card = open(os.path.join(BASES, name, "README.md")).read()
        assert "Command: `" in card and "seed" in card and "sha256" in card


def test_a_corrupted_base_file_is_refused_with_its_name(tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(BASES, copy)
    target = copy / "tiny-llama" / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="tiny-llama/model.safetensors: sha256 mismatch"):
        verify_manifest(str(copy))
    with pytest.raises(SystemExit, match="tiny-llama/model.safetensors"):
        pipeline.shipped_bases(str(copy))
    (copy / "tiny-clip" / "config.json").unlink()
    with pytest.raises(ManifestError, match="tiny-clip/config.json is missing"):
        verify_manifest(str(copy), ["tiny-clip/config.json"])
    (copy / MANIFEST).unlink()
    with pytest.raises(ManifestError, match="SHA256SUMS is missing"):
        verify_manifest(str(copy))


def test_the_shipped_bases_have_the_shape_the_recipe_names():
    """`python train.py --make-bases` builds recipes.CLASSROOM.bases; the shipped bases must be that architecture,
    so a run on your own bases differs from the default run only in training."""
    z = CLASSROOM.bases
    vision = read_json(os.path.join(BASES, "tiny-clip", "config.json"))["vision_config"]
    text = read_json(os.path.join(BASES, "tiny-llama", "config.json"))
    assert (vision["image_size"], vision["patch_size"], vision["hidden_size"], vision["num_hidden_layers"]) == \
        (z.image_size, z.patch_size, z.vision_hidden, z.vision_layers)
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_key_value_heads"]) == \
        (z.text_hidden, z.text_layers, z.text_kv_heads)
    assert text["vocab_size"] <= z.vocab_size + 1          # the BPE's vocabulary, plus the added <image> token


def test_the_bases_know_every_word_todays_world_writes(scenes):
    """If the teacher or the world changes its wording, the shipped tokenizer and LM never saw the new words:
    remake the bases (python weights/make_tiny.py --out weights/tiny, see its model cards)."""
    known = set(read_json(os.path.join(BASES, BASES_REPORT))["training_text"]["words"])
    today = set(world_text.world_words("\n".join(world_text.read_world_text(scenes, [])["text"])))
    assert today <= known, f"words the shipped bases never saw: {sorted(today - known)[:20]}"


def test_the_bases_know_every_word_of_every_seen_wording():
    """A small world draws only some wordings; this checks all of them, so a new one is caught before a run draws it.
    (Held-out wordings may use any word: no training file holds them.)"""
    known = set(read_json(os.path.join(BASES, BASES_REPORT))["training_text"]["words"])
    for kind, wordings in [*phrasings.QUESTIONS.items(), ("detail", phrasings.DETAIL_INSTRUCTIONS)]:
        for wording in wordings.seen:
            new = set(world_text.world_words(re.sub(r"\{\w+\}", "", wording))) - known
            assert not new, f"{kind} wording {wording!r}: words the shipped bases never saw: {sorted(new)}"


def test_bases_load_through_the_real_loaders_and_read_held_out_scenes(scenes):
    clip = weights.load_clip(os.path.join(BASES, "tiny-clip")).eval()
    test_scenes = read_json(os.path.join(scenes, "scenes_test.json"))[:20]
    images = tiny_clip.load_images(scenes, test_scenes, clip.config.vision_config)
    clip_tok = HFTokenizer.from_file(os.path.join(BASES, "tiny-clip", "tokenizer.json"))
    with torch.no_grad():
        retrieval = tiny_clip.retrieval_accuracy(clip, images, test_scenes, clip_tok,
                                                 clip.config.text_config.max_position_embeddings, pool=20)
    assert retrieval >= 0.8, f"image->caption retrieval among 20 held-out scenes: {retrieval:.0%}"

    llm = weights.load_llama(os.path.join(BASES, "tiny-llama")).eval()
    tok = Tokenizer.from_file(os.path.join(BASES, "tiny-llama"))
    questions = read_json(os.path.join(scenes, "test.json"))[:40]
    result = text_qa(llm, tok, read_json(os.path.join(scenes, "scenes_test.json")), questions)
    # 42.5% when the bases were made (55.4% on all 3,304; blind guessing gets about 25%)
    assert result["overall"] >= 0.3, f"text-only premise on 40 held-out questions: {result['overall']:.0%}"
