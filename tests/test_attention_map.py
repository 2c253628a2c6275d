"""The attention heat map: weights are the right average and sum to one over the patches; the PNG has the image's
size; the CLI runs end to end on a tiny model."""
import os

import pytest
import torch
from PIL import Image

from llava_mini.eval.attention_map import (
    answer_attention,
    heat_on_image,
    image_patch_weights,
    main,
    overlay,
    parse_index_list,
)


def test_patch_weights_average_and_renormalise():
    # 2 layers, 2 heads, 5 positions: positions 1..4 are a 2x2 image, query rows 3 and 4 are the answer's.
    att = [torch.zeros(1, 2, 5, 5) for _ in range(2)]
    att[0][0, 0, 3, 1] = 0.4          # layer 0 head 0: row 3 looks at patch 0
    att[0][0, 1, 4, 2] = 0.2          # layer 0 head 1: row 4 looks at patch 1
    att[1][0, :, :, 4] = 0.1          # layer 1, every head and row: patch 3
    w = image_patch_weights(att, [3, 4], [1, 2, 3, 4])
    assert w.sum().item() == pytest.approx(1.0)
    # sums over (layer, head, row): patch0 0.4, patch1 0.2, patch3 4 x 0.1 -> renormalised over 1.0
    assert w.tolist() == pytest.approx([0.4, 0.2, 0.0, 0.4])
    only = image_patch_weights(att, [3, 4], [1, 2, 3, 4], layers=[0], heads=[1])
    assert only.tolist() == pytest.approx([0, 1, 0, 0])
    with pytest.raises(ValueError, match="no attention"):
        image_patch_weights(att, [0], [1, 2, 3, 4], layers=[0])


def test_parse_index_list():
    assert parse_index_list("all", 4, "layer") == [0, 1, 2, 3]
    assert parse_index_list("-1", 4, "layer") == [3]
    assert parse_index_list("0,2", 4, "layer") == [0, 2]
    assert parse_index_list("1:3", 4, "layer") == [1, 2]
    with pytest.raises(ValueError, match="layer 7 does not exist"):
        parse_index_list("7", 4, "layer")


def test_heat_follows_the_geometry_of_pad_and_crop():
    w = torch.tensor([1.0, 0, 0, 0])                   # all attention on the top-left patch of a 2x2 grid
    pad = heat_on_image(w, (40, 20), "pad", smooth=False)
    assert pad.shape == (20, 40)
    # pad: a 40x40 canvas with the image in rows 10..29; the top-left patch covers canvas rows 0..19, cols 0..19
    assert pad[0, 0] == 1 and pad[9, 19] == 1 and pad[10, 20] == 0 and pad[0, 39] == 0
    crop = heat_on_image(w, (40, 20), "crop", smooth=False)
    # crop: the centred 20x20 square (cols 10..29) is what the model saw; outside it nothing
    assert crop[0, 5] == 0 and crop[0, 10] == 1 and crop[9, 19] == 1 and crop[10, 20] == 0


def test_overlay_keeps_the_image_size():
    image = Image.new("RGB", (50, 30), (120, 200, 90))
    w = torch.softmax(torch.randn(16), 0)
    assert overlay(image, w).size == (50, 30)
    assert overlay(image, w, scale=3).size == (150, 90)


def test_answer_attention_and_cli_on_a_tiny_model(tmp_path, capsys):
    from test_chat import make_tiny_checkpoint

    from llava_mini.loading.model_folder import load_checkpoint
    model_dir = make_tiny_checkpoint(str(tmp_path / "ckpt"))
    image_path = str(tmp_path / "img.png")
    Image.new("RGB", (48, 40), (30, 30, 200)).save(image_path)
    model, tokenizer, template = load_checkpoint(model_dir)
    answer, w = answer_attention(model, tokenizer, Image.open(image_path).convert("RGB"), "What colour?", template,
                                 max_new_tokens=4)
    assert w.shape == (model.config.vision_config.num_patches,) and (w >= 0).all()
    assert w.sum().item() == pytest.approx(1.0, abs=1e-5)
    forced_text, forced = answer_attention(model, tokenizer, Image.open(image_path).convert("RGB"), "What colour?",
                                           template, answer="blue", layers=[1], heads=[0, 3])
    assert forced_text == "blue"
    assert forced.sum().item() == pytest.approx(1.0, abs=1e-5) and not torch.allclose(forced, w)

    out = str(tmp_path / "map.png")
    main(["--model", model_dir, "--image", image_path, "--question", "What colour?", "--out", out, "--layers", "-1"])
    assert Image.open(out).size == (48, 40)
    assert "wrote" in capsys.readouterr().out and os.path.exists(out)
