"""weights/make_tiny.py and weights/tiny_clip.py: the LLaMA-shaped BPE tokenizer, the tiny CLIP's pairs, and tiny bases
that the real loaders read back."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from conftest import load_script
from safetensors.torch import load_file

from llava_mini.training.recipes import BASES_REPORT, BaseSizes
from llava_mini.data.conversation import SHORT_ANSWER_PROMPT, tokenize_conversation
from llava_mini.data.tokenizer import Tokenizer
from llava_mini.eval import text_qa
from llava_mini.jsonio import read_json
from llava_mini.loading import weights
from llava_mini.model.clip import CLIPModel
from llava_mini.model.config import CLIPConfig, TextConfig, read_config
from llava_mini.model.llama import LlamaForCausalLM
from llava_mini.synth import world

make_tiny = load_script("weights/make_tiny.py")          # puts the repository root on sys.path
import weights.tiny_clip as tiny_clip  # noqa: E402
import weights.tiny_llama as tiny_llama  # noqa: E402
from weights.base_training import init_weights  # noqa: E402
import weights.world_text as world_text  # noqa: E402

TEXTS = ["A red circle at the top left and a blue square in the center.",
         "A chat between a curious user and an artificial intelligence assistant. USER: How many objects are there?"
         " ASSISTANT: There are 2 objects in the image.</s>"] * 20


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    make_tiny.train_tokenizer(TEXTS, vocab_size=700).save(path)
    return path


def test_tokenizer_has_llama_specials_and_image_token(tokenizer_json):
    tok = Tokenizer.from_file(tokenizer_json)
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.id_to_token(3) == "<0x00>" and tok.id_to_token(258) == "<0xFF>"      # byte fallback, as LLaMA
    assert tok.image_token_id == tok.vocab_size - 1                                    # added after the vocabulary
    assert tok.adds_prefix_space                                                       # "a" -> "▁a", as LLaMA
    assert tok.encode("<image>\nhi</s>")[0] == tok.image_token_id and tok.encode("x</s>")[-1] == tok.eos_id


def test_tokenizer_round_trips_any_text(tokenizer_json):
    tok = Tokenizer.from_file(tokenizer_json)
    for text in ["A red circle at the top left.", "Zebra ünïcode 🙂 and\nnewlines\ttabs", "   spaced  out "]:
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("red circle")
    assert len(ids) == 2, [tok.id_to_token(i) for i in ids]                            # learned whole words


@pytest.mark.parametrize("template", ["plain", "vicuna_v1", "llava_v1"])
def test_tokenizer_works_with_the_templates(tokenizer_json, template):
    tok = Tokenizer.from_file(tokenizer_json)
    turns = ["<image>\nHow many objects are there?", "There are 2 objects.", "What color is the circle?", "Red."]
    turns = turns[:2] if template == "plain" else turns
    ids, labels = tokenize_conversation(tok, turns, template, "t0")        # raises on a segment/whole mismatch
    trained = tok.decode([i for i, label in zip(ids, labels) if label != -100])
    assert "2 objects" in trained and "How many" not in trained


TINY_SIZES = dict(image_size=32, vision_hidden=32, vision_layers=2, text_hidden=32, text_layers=2, text_kv_heads=1,
                  vocab_size=400, clip_steps=3, clip_batch=8, clip_scenes=0, lm_steps=3, sft_steps=2, lookup_steps=2,
                  lookup_scenes=4, binding_steps=2, binding_batch=4, lm_batch=4, lm_block=1024)


@pytest.fixture(scope="module")
def one_process_bases(tmp_path_factory):
    """(world folder, make_tiny's stats) of toy-sized bases made by one process."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("bases")
    data = str(root / "shapes")
    world.generate_dataset(data, 24, 8, seed=0, image_size=32, quiet=True)
    return data, make_tiny.make_tiny(data, str(root / "one"), command="make the first", **TINY_SIZES)


def test_make_tiny_writes_loadable_hf_folders(one_process_bases):
    stats = one_process_bases[1]
    assert 0.0 <= stats["clip_retrieval_top1"] <= 1.0 and stats["lm_heldout_loss"] > 0
    clip_dir, llama_dir = stats["clip_dir"], stats["llama_dir"]
    assert isinstance(read_config(clip_dir), CLIPConfig) and isinstance(read_config(llama_dir), TextConfig)
    clip = weights.load_clip(clip_dir)
    llama = weights.load_llama(llama_dir)
    tok = Tokenizer.from_file(llama_dir)
    assert llama.config.vocab_size == tok.vocab_size and llama.config.eos_token_id == tok.eos_id == 2
    assert clip.config.vision_config.image_size == 32
    # the CLIP text tower pools at its own end-of-text token, the last id of its tokenizer (not </s> = 2)
    clip_tok = Tokenizer.from_file(clip_dir)
    assert clip.config.text_config.eos_token_id == clip_tok.token_to_id(tiny_clip.END_OF_TEXT) == clip_tok.vocab_size - 1
    # the vision tower alone loads too: LLaVA's view of the checkpoint
    tower = weights.load_clip(clip_dir, vision_only=True)
    assert torch.equal(tower.vision_model.embeddings.patch_embedding.weight,
                       clip.vision_model.embeddings.patch_embedding.weight)
    # a trained LM: its held-out loss is below the uniform guess
    assert stats["lm_heldout_loss"] < torch.log(torch.tensor(float(tok.vocab_size))).item()
    assert llama.config.num_key_value_heads == TINY_SIZES["text_kv_heads"]
    assert "1 query heads and 1 key/value heads" in open(os.path.join(llama_dir, "README.md")).read()


def test_text_config_shares_key_value_heads_only_in_whole_groups(tokenizer_json):
    tok = Tokenizer.from_file(tokenizer_json)
    config = tiny_llama.text_config(BaseSizes(text_hidden=128, text_kv_heads=2), tok)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 32)
    assert config.vocab_size == tok.vocab_size and config.eos_token_id == tok.eos_id
    with pytest.raises(ValueError, match="--text-kv-heads 3 must divide the 4 query heads of --text-hidden 128"):
        tiny_llama.text_config(BaseSizes(text_hidden=128, text_kv_heads=3), tok)


def test_init_llama_goes_on_from_a_made_llama_and_its_card_lists_every_run(one_process_bases, tmp_path):
    """--init-llama: the drill alone on the LLaMA an earlier run made, with that run's tokenizer; the card and
    make_tiny.json say how each run trained it, and a folder without that record is refused with its name."""
    data, first = one_process_bases
    drill = dict(TINY_SIZES, lm_steps=0, sft_steps=0, lookup_steps=3, binding_steps=0)
    second = make_tiny.make_tiny(data, str(tmp_path / "second"), command="drill it", keep_clip=first["clip_dir"],
                                 init_llama=first["llama_dir"], **drill)
    assert open(os.path.join(second["llama_dir"], "tokenizer.json")).read() == \
        open(os.path.join(first["llama_dir"], "tokenizer.json")).read()
    a = load_file(os.path.join(first["llama_dir"], "model.safetensors"))
    b = load_file(os.path.join(second["llama_dir"], "model.safetensors"))
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)             # trained on
    assert [run["command"] for run in second["llama_made"]] == ["make the first"]
    card = open(os.path.join(second["llama_dir"], "README.md")).read()
    assert "Run 1: pretraining 3 steps, instruction tuning 2 steps, lookup drill 2 steps, binding drill 2 steps" in card
    assert "Run 2: lookup drill 3 steps" in card and "make the first" in card and "drill it" in card
    third = make_tiny.make_tiny(data, str(tmp_path / "third"), keep_clip=first["clip_dir"],
                                init_llama=second["llama_dir"], command="again", **drill)
    assert [run["command"] for run in third["llama_made"]] == ["make the first", "drill it"]
    with pytest.raises(FileNotFoundError, match="--init-llama .*nowhere: no such folder"):
        make_tiny.make_tiny(data, str(tmp_path / "fourth"), init_llama=str(tmp_path / "nowhere"), **drill)
    os.remove(os.path.join(tmp_path / "second", BASES_REPORT))
    with pytest.raises(FileNotFoundError, match="--init-llama .*second/tiny-llama: no .*make_tiny.json"):
        make_tiny.make_tiny(data, str(tmp_path / "fourth"), keep_clip=first["clip_dir"],
                            init_llama=second["llama_dir"], **drill)


def test_init_llama_with_more_key_value_heads_widens_the_llama_without_changing_what_it_computes(one_process_bases,
                                                                                                  tmp_path):
    """--init-llama with --text-kv-heads above the made LLaMA's: each key/value head is repeated for the query heads
    that shared it, so the widened LLaMA gives the same logits; the card says so. A number that is no multiple of
    the old one is refused with the flag's name."""
    data, first = one_process_bases
    sizes = dict(TINY_SIZES, text_hidden=64, lm_steps=2, sft_steps=0, lookup_steps=0, binding_steps=0)   # 2 query heads
    narrow = make_tiny.make_tiny(data, str(tmp_path / "narrow"), keep_clip=first["clip_dir"], **sizes)
    wide = make_tiny.make_tiny(data, str(tmp_path / "wide"), keep_clip=first["clip_dir"], command="widen",
                               init_llama=narrow["llama_dir"], **dict(sizes, lm_steps=0, text_kv_heads=2))
    a, b = weights.load_llama(narrow["llama_dir"]).eval(), weights.load_llama(wide["llama_dir"]).eval()
    assert (a.config.num_key_value_heads, b.config.num_key_value_heads) == (1, 2)
    x = torch.randint(3, a.config.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(b(x).logits, a(x).logits, rtol=1e-5, atol=1e-5)
    card = open(os.path.join(wide["llama_dir"], "README.md")).read()
    assert "Run 2: 1 key/value head(s) widened to 2" in card and "no training steps" in card
    with pytest.raises(ValueError, match="--text-kv-heads 3: the LLaMA has 2 key/value head"):
        tiny_llama.widen_kv_heads(b, 3)


def test_lookup_drill_asks_new_scenes_in_words_and_every_answer_is_true():
    """world_text.lookup_chats: each chat opens with its scene in words, asks only seen phrasings with the
    answer-format prompt, and answers what the scene's objects say; the scenes are new ones, not the world's."""
    from test_world import PARSE, oracle
    scenes = world_text.new_scenes(40, seed=0)
    assert len({s["id"] for s in scenes}) == 40 and all(s["id"].startswith("lookup_") for s in scenes)
    assert scenes[0]["objects"] != world_text.new_scenes(1, seed=1)[0]["objects"]          # the seed draws them
    by_text = {world.scene_in_words(s): s for s in scenes}
    chats, types = world_text.lookup_chats(scenes), set()
    for chat in chats:
        words, first = chat[0].split("\n", 1)
        scene = by_text[words]
        for question, answer in zip([first, *chat[2::2]], chat[1::2]):
            assert question.endswith(SHORT_ANSWER_PROMPT) and PARSE(question.removesuffix(SHORT_ANSWER_PROMPT))[1] \
                == "seen"
            assert oracle(question, scene["objects"]) == answer, (words, question, answer)
            types.add(PARSE(question.removesuffix(SHORT_ANSWER_PROMPT))[0])
    assert types == {"count", "count_color", "count_shape", "color", "shape", "exists", "position"}
    assert len(chats) >= 2 * len(scenes)            # about seven questions a scene, three to a chat


def test_binding_drill_states_every_objects_colour_and_shape_and_trains_only_the_facts():
    """world_text.binding_texts: a listed scene of distinct colours and shapes, then both facts of each of its objects
    and nothing else; as LM samples (lm_samples' `prefixed`) only the facts and </s> are trained."""
    import re
    texts = world_text.binding_texts(50, seed=0)
    assert texts != world_text.binding_texts(50, seed=1)
    for scene, facts in texts:
        pairs = re.findall(r"an? (\w+) (\w+)", scene.split(": ", 1)[1])
        colors, shapes = [c for c, _ in pairs], [s for _, s in pairs]
        assert 2 <= len(pairs) <= 4 and len(set(colors)) == len(colors) and len(set(shapes)) == len(shapes)
        stated = sorted(f.rstrip(".") for f in facts.split(". "))
        assert stated == sorted([f"The {s} is {c}" for c, s in pairs] +
                                [f"The {c} one is {world_text.article(s)}" for c, s in pairs])
    tok = Tokenizer.from_file(os.path.join(os.path.dirname(__file__), "..", "weights", "tiny", "tiny-llama"))
    (ids, labels), = tiny_llama.lm_samples(tok, [], [], True, 384, prefixed=texts[:1])
    trained = [i for i, label in zip(ids.tolist(), labels.tolist()) if label != -100]
    assert tok.decode(trained[:-1]) == texts[0][1] and trained[-1] == tok.eos_id
    assert tok.decode([i for i, label in zip(ids.tolist(), labels.tolist()) if label == -100][1:]) == texts[0][0]


def _make_tiny_worker(rank: int, port: int, data: str, out: str):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo")
    torch.set_num_threads(1)
    make_tiny.make_tiny(data, out, **TINY_SIZES)
    torch.distributed.destroy_process_group()


def test_keep_clip_remakes_only_the_llm_and_the_card_keeps_how_the_clip_was_made(one_process_bases, tmp_path):
    data, first = one_process_bases
    sizes = dict(TINY_SIZES, clip_steps=7, lm_steps=4)
    second = make_tiny.make_tiny(data, str(tmp_path / "second"), command="remake the LLM", seed=1,
                                 keep_clip=first["clip_dir"], **sizes)
    a = load_file(os.path.join(first["clip_dir"], "model.safetensors"))
    b = load_file(os.path.join(second["clip_dir"], "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)                  # the CLIP as it was
    assert second["clip_retrieval_top1"] == first["clip_retrieval_top1"]                      # measured again
    a = load_file(os.path.join(first["llama_dir"], "model.safetensors"))
    b = load_file(os.path.join(second["llama_dir"], "model.safetensors"))
    assert not all(torch.equal(a[k], b[k]) for k in a)                                        # a new LLaMA
    cards = {name: open(tmp_path / "second" / name / "README.md").read() for name in ("tiny-clip", "tiny-llama")}
    assert "make the first" in cards["tiny-clip"] and "3 steps of batch" in cards["tiny-clip"]
    assert "remake the LLM" in cards["tiny-llama"] and "pretraining 4 steps" in cards["tiny-llama"]
    # kept again, from the kept copy: still the first record
    third = make_tiny.make_tiny(data, str(tmp_path / "third"), keep_clip=second["clip_dir"], command="again", **sizes)
    assert [run["command"] for run in third["clip_made"]] == ["make the first"] and third["clip_kept"]
    os.remove(os.path.join(second["clip_dir"], "tokenizer.json"))
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        make_tiny.make_tiny(data, str(tmp_path / "fourth"), keep_clip=second["clip_dir"], **sizes)


def test_init_clip_goes_on_training_the_clip_and_keep_llama_keeps_the_llm(one_process_bases, tmp_path):
    """--init-clip with --keep-llama: only the CLIP trains (from the earlier one, with its tokenizer); the LLaMA and
    its tokenizer are the earlier ones, byte for byte. The CLIP's card lists both runs, the LLaMA's only the first."""
    data, first = one_process_bases
    more = dict(TINY_SIZES, clip_steps=2, clip_scenes=5)
    second = make_tiny.make_tiny(data, str(tmp_path / "second"), command="train the CLIP on", seed=1,
                                 init_clip=first["clip_dir"], keep_llama=first["llama_dir"], **more)
    a = load_file(os.path.join(first["clip_dir"], "model.safetensors"))
    b = load_file(os.path.join(second["clip_dir"], "model.safetensors"))
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)              # trained on
    a = load_file(os.path.join(first["llama_dir"], "model.safetensors"))
    b = load_file(os.path.join(second["llama_dir"], "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)                                            # the LLaMA as it was
    for base in ("clip_dir", "llama_dir"):
        assert open(os.path.join(second[base], "tokenizer.json")).read() == \
            open(os.path.join(first[base], "tokenizer.json")).read()
    assert second["lm_heldout_loss"] == first["lm_heldout_loss"]                              # measured again
    assert [r["command"] for r in second["clip_made"]] == ["make the first"] and not second["clip_kept"]
    assert [r["command"] for r in second["llama_made"]] == ["make the first"] and second["llama_kept"]
    cards = {name: open(tmp_path / "second" / name / "README.md").read() for name in ("tiny-clip", "tiny-llama")}
    assert "Run 1: 3 steps of batch" in cards["tiny-clip"]
    assert "lr 0.002, every patch alone too (per-patch weight 1.0)\n" in cards["tiny-clip"]     # make_tiny's default
    assert "Run 2: 2 steps of batch 8, lr 0.002, on the train scenes and 5 new ones, every patch alone too" \
        in cards["tiny-clip"]
    assert "train the CLIP on" in cards["tiny-clip"] and "train the CLIP on" not in cards["tiny-llama"]
    assert "Run 1: pretraining 3 steps" in cards["tiny-llama"] and "Run 2" not in cards["tiny-llama"]
    with pytest.raises(ValueError, match="not both"):
        make_tiny.make_tiny(data, str(tmp_path / "third"), keep_clip=first["clip_dir"], init_clip=first["clip_dir"],
                            **more)


def test_new_scenes_render_as_the_world_writes_them(one_process_bases):
    """The CLIP's new scenes (never written) are preprocessed to the same tensors that the world's PNG files give,
    and each kind of new scene has its own random stream, apart from the world's scenes."""
    data, first = one_process_bases
    scenes = read_json(os.path.join(data, "scenes_train.json"))[:3]
    vision = weights.load_clip(first["clip_dir"]).config.vision_config
    assert torch.equal(tiny_clip.render_images(scenes, vision), tiny_clip.load_images(data, scenes, vision))
    clip, lookup = world_text.new_scenes(2, kind="clip"), world_text.new_scenes(2, kind="lookup")
    assert clip[0]["id"] == "clip_000000" and clip[0]["objects"] != lookup[0]["objects"]


def test_two_gloo_processes_make_the_same_bases_as_one(one_process_bases, tmp_path):
    """Under torchrun the processes split each CLIP and LM batch and gather the features: the contrastive loss still
    sees the whole batch, so both models (and the file of measurements) equal the one-process run."""
    data, one = one_process_bases
    one_dir = os.path.dirname(one["clip_dir"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_make_tiny_worker, args=(port, data, str(tmp_path / "two")), nprocs=2, join=True)
    two = read_json(str(tmp_path / "two" / BASES_REPORT))
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["lm_heldout_loss"] == pytest.approx(one["lm_heldout_loss"], rel=1e-4)
    for name in ("tiny-clip", "tiny-llama"):
        a = load_file(os.path.join(one_dir, name, "model.safetensors"))
        b = load_file(str(tmp_path / "two" / name / "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            # Adam turns float noise in near-zero gradients (a key bias has none) into steps of up to lr; 3 steps of
            # lr 2e-3 move a weight by up to 6e-3, so 1e-3 still fails a wrong split of the batch
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-3, msg=f"{name}: {k}")
    # and they trained: 3 steps moved the weights away from the seeded initialisation
    init = init_weights(LlamaForCausalLM(read_config(one["llama_dir"])))
    assert not torch.equal(init.model.embed_tokens.weight, a["model.embed_tokens.weight"])


def test_object_regions_cover_the_patches_inside_each_box():
    scene = {"objects": [
        {"shape": "star", "color": "red", "size": "large", "bbox": [0.0, 0.0, 0.5, 0.5], "center": [0.25, 0.25]},
        # a box that holds no patch centre (grid 4: centres at 1/8, 3/8, 5/8, 7/8) falls back to its centre patch
        {"shape": "circle", "color": "blue", "size": "small", "bbox": [0.52, 0.52, 0.6, 0.6], "center": [0.56, 0.56]}]}
    masks, phrases = tiny_clip.object_regions(scene, grid=4)
    assert masks.shape == (2, 16)
    assert masks[0].view(4, 4).nonzero().tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert masks[1].view(4, 4).nonzero().tolist() == [[2, 2]]
    assert phrases == ["large red star at the top left", "small blue circle in the center"]


def small_clip(tokenizer_json):
    """A random CLIP of 32 px images in 4x4 patches of 8 px, hidden 32, and its text tower's tokenizer."""
    from tokenizers import Tokenizer as HFTokenizer
    clip_tok = tiny_clip.clip_tokenizer(HFTokenizer.from_file(tokenizer_json))
    eot = clip_tok.token_to_id(tiny_clip.END_OF_TEXT)
    from llava_mini.model.config import CLIPTextConfig, VisionConfig
    config = CLIPConfig(vision_config=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=1, image_size=32, patch_size=8, projection_dim=32),
                        text_config=CLIPTextConfig(vocab_size=clip_tok.get_vocab_size(), hidden_size=32,
                                                   intermediate_size=64, num_hidden_layers=1, num_attention_heads=1,
                                                   max_position_embeddings=32, projection_dim=32, pad_token_id=eot,
                                                   bos_token_id=1, eos_token_id=eot), projection_dim=32)
    model = init_weights(CLIPModel(config))
    return model, clip_tok


def test_region_logits_target_each_objects_own_phrase(tokenizer_json):
    model, clip_tok = small_clip(tokenizer_json)
    one = ({"shape": "star", "color": "red", "size": "large", "bbox": [0, 0, .5, .5], "center": [.25, .25]})
    two = ({"shape": "circle", "color": "blue", "size": "small", "bbox": [.5, .5, 1, 1], "center": [.75, .75]})
    regions = [tiny_clip.object_regions({"objects": [one, two]}, 4), tiny_clip.object_regions({"objects": [one]}, 4)]
    hidden = torch.randn(2, 17, 32)
    logits, targets = tiny_clip.region_logits(model, hidden, regions, clip_tok, 32)
    assert logits.shape == (3, 2)                      # 3 objects, 2 distinct phrases (the repeated one counted once)
    assert targets.tolist() == [0, 1, 0]               # sorted phrases: "large red star ..." < "small blue circle ..."
    # each region is the mean of its own patches: moving a patch outside every box changes nothing
    hidden2 = hidden.clone()
    hidden2[:, 1 + 2] += 100.0                         # patch (0, 2) lies in no box
    assert torch.allclose(tiny_clip.region_logits(model, hidden2, regions, clip_tok, 32)[0], logits)
    # hard negatives join the candidates; each region still targets its own phrase, and a negative that is some
    # region's own phrase is not counted twice
    negatives = tiny_clip.counterfactual_phrases({"objects": [one]}) + ["small blue circle at the bottom right"]
    logits, targets = tiny_clip.region_logits(model, hidden, regions, clip_tok, 32, negatives)
    phrases = sorted({"large red star at the top left", "small blue circle at the bottom right"} | set(negatives))
    assert logits.shape == (3, len(phrases)) == (3, 1 + 5 + 8 + 1)
    assert [phrases[t] for t in targets] == ["large red star at the top left", "small blue circle at the bottom right",
                                             "large red star at the top left"]


def test_region_logits_per_patch_make_every_patch_of_one_box_a_row_of_its_own(tokenizer_json):
    model, clip_tok = small_clip(tokenizer_json)
    # grid 4: the star covers patches (0,0) (0,1) (1,0) (1,1); the circle (1,1) (1,2) (2,1) (2,2); (1,1) is in both
    star = {"shape": "star", "color": "red", "size": "large", "bbox": [0, 0, .5, .5], "center": [.25, .25]}
    circle = {"shape": "circle", "color": "blue", "size": "small", "bbox": [.25, .25, .75, .75], "center": [.5, .5]}
    regions = [tiny_clip.object_regions({"objects": [star, circle]}, 4)]
    hidden = torch.randn(1, 17, 32)
    logits, targets = tiny_clip.region_logits(model, hidden, regions, clip_tok, 32, per_patch=True)
    assert logits.shape == (6, 2)                      # 3 + 3 patches; the shared patch (1,1) is no one's row
    assert targets.tolist() == [0, 0, 0, 1, 1, 1]      # sorted phrases: "large red star ..." < "small blue circle ..."
    # each row is one patch: changing patch (2,2), the circle's last, changes that row only
    shift = torch.linspace(-10, 10, 32)                # not a constant, which the LayerNorm would remove
    hidden2 = hidden.clone()
    hidden2[0, 1 + 2 * 4 + 2] += shift
    changed = (tiny_clip.region_logits(model, hidden2, regions, clip_tok, 32, per_patch=True)[0] - logits).abs()
    assert changed.sum(1).gt(1e-6).tolist() == [False] * 5 + [True]
    # and the shared patch moves no row at all
    hidden3 = hidden.clone()
    hidden3[0, 1 + 1 * 4 + 1] += shift
    assert torch.allclose(tiny_clip.region_logits(model, hidden3, regions, clip_tok, 32, per_patch=True)[0], logits)
    # train_clip scores the pooled rows and the patch rows against phrases encoded once: the same as apart
    rows = [tiny_clip.region_rows(model, hidden, regions, per_patch=p) for p in (False, True)]
    both = tiny_clip.phrase_logits(model, clip_tok, 32, regions, rows)
    for (logits_, targets_), p in zip(both, (False, True)):
        apart = tiny_clip.region_logits(model, hidden, regions, clip_tok, 32, per_patch=p)
        assert torch.allclose(logits_, apart[0]) and torch.equal(targets_, apart[1])


def test_counterfactual_phrases_swap_only_the_shape_or_only_the_position():
    scene = {"objects": [{"shape": "star", "color": "red", "size": "large", "center": [0.5, 0.5]}]}
    phrases = tiny_clip.counterfactual_phrases(scene)
    assert phrases[:5] == [f"large red {s} in the center" for s in ("circle", "square", "rectangle", "triangle",
                                                                    "diamond")]
    assert phrases[5:] == [f"large red star at the {w}" for w in tiny_clip.POSITION_NAMES if w != "center"]
    assert "large red star in the center" not in phrases and len(set(phrases)) == 13
    # sampled (what training uses): one of each kind per object, drawn from the same lists
    import random
    sampled = tiny_clip.counterfactual_phrases({"objects": scene["objects"] * 2}, random.Random(0))
    assert len(sampled) == 4 and sampled[0] in phrases[:5] and sampled[1] in phrases[5:]


def test_text_qa_asks_about_the_captions_and_scores_the_answers(tmp_path):
    """eval/text_qa.py: each held-out question is asked with its scene's captions in the prompt; a model that
    answers right scores 100%, the tiny untrained one gives a real number."""
    data = str(tmp_path / "shapes")
    world.generate_dataset(data, 24, 8, seed=0, image_size=32, quiet=True)
    tok_path = str(tmp_path / "tokenizer.json")
    make_tiny.train_tokenizer(world_text.read_world_text(data, [])["text"], vocab_size=400).save(tok_path)
    tok = Tokenizer.from_file(tok_path)
    scene = read_json(os.path.join(data, "scenes_test.json"))[0]
    question = read_json(os.path.join(data, "test.json"))[0]
    prompt = tok.decode(text_qa.text_prompt(tok, " ".join(scene["captions"]), question["question"]))
    assert scene["captions"][0] in prompt and question["question"] in prompt and prompt.endswith("ASSISTANT:")

    scenes, questions = read_json(os.path.join(data, "scenes_test.json")), read_json(os.path.join(data, "test.json"))
    pending = list(questions[:5])

    class Oracle:                                     # answers the questions of each batch in order, always right
        def generate(self, ids, **kw):
            from types import SimpleNamespace
            return SimpleNamespace(tokens=[tok.encode(str(pending.pop(0)["answer"])) for _ in range(len(ids))])
    right = text_qa.text_qa(Oracle(), tok, scenes, questions[:5], batch_size=2)
    assert right["overall"] == 1.0 and set(right["per_phrasing"]) <= {"seen", "heldout"}
    torch.manual_seed(0)
    llm = init_weights(LlamaForCausalLM(TextConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1,
        num_key_value_heads=1, eos_token_id=tok.eos_id)))
    result = text_qa.text_qa(llm.eval(), tok, scenes, questions[:10])
    assert result["n"] == 10 and 0.0 <= result["overall"] < 1.0


def test_probe_tower_reads_colour_even_from_an_untrained_tower(tmp_path):
    """benchmarks/probe_tower.py: per-object linear probes. Colour is linear in the raw pixels, so even an untrained
    tower's patch features give it far above chance (1/11); the probe's labels line up with the objects."""
    data = str(tmp_path / "shapes")
    world.generate_dataset(data, 120, 40, seed=0, image_size=32, quiet=True)
    from llava_mini.model.clip import CLIPVisionModel
    from llava_mini.model.config import VisionConfig
    torch.manual_seed(0)
    tower = init_weights(CLIPVisionModel(VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                                num_attention_heads=1, image_size=32, patch_size=8)))
    scenes = read_json(os.path.join(data, "scenes_test.json"))
    x, y = tiny_clip.object_features(tower, tiny_clip.load_images(data, scenes, tower.config), scenes, layer=-2)
    assert x.shape == (sum(len(s["objects"]) for s in scenes), 32)
    assert y["colour"][0] == list(world.COLORS).index(scenes[0]["objects"][0]["color"])
    result = tiny_clip.probe_tower(tower, data, n_train=120)
    assert set(result) == {"shape", "colour", "position"}
    assert result["colour"]["probe"] > 0.5, result
    # in the raw pixels colour is most of the variance, far more than where the object is
    assert result["colour"]["share"] > result["position"]["share"] and 0 < result["position"]["share"] < 1, result
    # --llava probes whatever `encode` gives (a model's projector outputs); here the pixels' own features, which
    # must read differently from the tower's
    flat = tiny_clip.probe_tower(tower, data, n_train=120, encode=lambda x: x.unfold(2, 8, 8).unfold(3, 8, 8).permute(
        0, 2, 3, 1, 4, 5).reshape(len(x), 16, -1))                                  # (B, 16 patches, 3*8*8)
    assert set(flat) == set(result) and flat != result and flat["colour"]["probe"] > 0.5
    # --per-patch: a row per patch inside each box, labelled with its object
    masks = [tiny_clip.object_regions(s, grid=4)[0] for s in scenes]
    px, py = tiny_clip.object_features(tower, tiny_clip.load_images(data, scenes, tower.config), scenes, layer=-2,
                                       per_patch=True)
    assert px.shape == (int(sum(m.sum() for m in masks)), 32) and len(py["shape"]) == len(px)
    per_object = torch.cat([m.sum(1) for m in masks]).long()              # patches inside each object's box
    assert torch.equal(py["colour"], y["colour"].repeat_interleave(per_object))
    first = int(per_object[0])
    assert torch.allclose(px[:first].mean(0), x[0], atol=1e-5)           # their mean is the per-object feature
    # --lookup: one head per look-up, scored where the scene offers two or more answers
    looked = tiny_clip.probe_lookups(tower, data, n_train=120, steps=5)
    assert set(looked) == set(tiny_clip.LOOKUPS), looked
    assert all(v["n"] > 0 and 0 < v["picking"] < 1 and 0 <= v["head"] <= 1 for v in looked.values()), looked


def test_lookup_rows_keep_only_objects_their_key_names_alone():
    """probe_tower --lookup: "what colour is the star?" has one answer only when the scene has one star; the row
    records how many answers of that kind the scene offers (picking one scores 1 / offered)."""
    def obj(shape, color, cx, cy):
        return {"shape": shape, "color": color, "center": [cx, cy]}
    scene = {"objects": [obj("star", "red", 0.1, 0.1), obj("star", "blue", 0.9, 0.9), obj("circle", "red", 0.5, 0.5)]}
    colour = list(world.COLORS).index
    assert tiny_clip.lookup_rows([scene], "shape", "colour") == [(0, world.SHAPES.index("circle"), colour("red"), 2)]
    assert tiny_clip.lookup_rows([scene], "colour", "shape") == [(0, colour("blue"), world.SHAPES.index("star"), 2)]
    places = tiny_clip.lookup_rows([scene], "object", "position")
    assert [r[2] for r in places] == [tiny_clip.POSITION_NAMES.index(p) for p in ("top left", "bottom right", "center")]
    assert {r[3] for r in places} == {3} and len({r[1] for r in places}) == 3


def test_attention_lookup_probe_finds_bound_tokens_and_not_a_bag_of_them(tmp_path):
    """One attention head, told the shape, reads the colour of that shape's token. When each token carries one
    object's shape and colour together it learns the look-up; when every token carries the whole scene's mix (the
    same attributes, unbound) it cannot do better than picking one of the scene's colours."""
    data = str(tmp_path / "shapes")
    world.generate_dataset(data, 300, 60, seed=0, image_size=32, quiet=True)
    n_colours = len(world.COLORS)

    def tokens(scenes, bound):
        out = torch.zeros(len(scenes), 8, len(world.SHAPES) + n_colours)      # (N, P, hidden): P = 8 tokens
        for i, scene in enumerate(scenes):
            for k, o in enumerate(scene["objects"]):
                out[i, k, world.SHAPES.index(o["shape"])] = 1
                out[i, k, len(world.SHAPES) + list(world.COLORS).index(o["color"])] = 1
            if not bound:
                out[i, :] = out[i, :len(scene["objects"])].mean(0)
        return out
    train, test = (read_json(os.path.join(data, f"scenes_{s}.json")) for s in ("train", "test"))
    rows = [tiny_clip.lookup_rows(s, "shape", "colour") for s in (train, test)]
    scored = [r for r in rows[1] if r[3] >= 2]
    picking = sum(1 / r[3] for r in scored) / len(scored)
    bound = tiny_clip.attention_lookup_probe(tokens(train, True), rows[0], tokens(test, True), rows[1], steps=300)
    bag = tiny_clip.attention_lookup_probe(tokens(train, False), rows[0], tokens(test, False), rows[1], steps=300)
    assert len(scored) >= 20 and bound > 0.9 > picking + 0.3, (bound, picking)
    assert bag < picking + 0.15, (bag, picking)


def test_variance_shares_measure_each_attribute_at_the_scale_the_llm_sees():
    """probe_tower.variance_shares: between-class over total variance. Feature 0 is +-3 by attribute a, feature 1 is
    +-1 by attribute b, so a explains 9/10 of the variance and b 1/10, however separable b is; scaling every
    feature together changes nothing."""
    a = torch.tensor([0, 1] * 50)
    b = torch.tensor([0, 0, 1, 1] * 25)
    x = torch.stack([3.0 * (2 * a - 1), 1.0 * (2 * b - 1)], dim=1).float()              # (100, 2)
    shares = tiny_clip.variance_shares(x, {"a": a, "b": b})
    assert shares == pytest.approx({"a": 0.9, "b": 0.1})
    assert tiny_clip.variance_shares(7 * x + 2, {"a": a, "b": b}) == pytest.approx(shares)
