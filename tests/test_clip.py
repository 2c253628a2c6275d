"""CLIP parity with transformers: vision hidden states at every layer, LLaVA feature selection, text tower, CLIPModel."""
import pytest
import torch

from llava_mini.model.attention import set_attention_backend
from llava_mini.model.clip import CLIPModel, CLIPTextModel, CLIPVisionModel, clip_loss
from llava_mini.model.config import CLIPConfig, CLIPTextConfig, VisionConfig

transformers = pytest.importorskip("transformers")

TOL = 1e-5
VISION = VisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, image_size=32,
                      patch_size=8, projection_dim=24)


def text_config(eos_token_id=98):
    return CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=16, projection_dim=24, eos_token_id=eos_token_id, bos_token_id=97,
                          pad_token_id=0)


def hf_clip(eos_token_id=98, act="quick_gelu"):
    torch.manual_seed(0)
    vis = {**VISION.to_hf(), "hidden_act": act}
    cfg = transformers.CLIPConfig(vision_config=vis, text_config=text_config(eos_token_id).to_hf(), projection_dim=24)
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():       # HF inits LayerNorms to (1, 0); randomise them so they are really compared
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5) if n.endswith("weight") else p.normal_(0, 0.1)
    return model


def ours_clip(hf, eos_token_id=98):
    ours = CLIPModel(CLIPConfig(vision_config=VISION, text_config=text_config(eos_token_id), projection_dim=24)).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    return ours


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_vision_hidden_states_and_selected_features(act):
    hf = hf_clip(act=act)
    hf_vision = transformers.CLIPVisionModel(hf.config.vision_config).eval()
    hf_vision.load_state_dict({k.removeprefix("vision_model."): v for k, v in hf.state_dict().items()
                               if k.startswith("vision_model.")})
    ours = CLIPVisionModel(VisionConfig(**{**VISION.__dict__, "hidden_act": act})).eval()
    ours.load_state_dict({k: v for k, v in hf.state_dict().items() if k.startswith("vision_model.")}, strict=True)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf_vision(pixels, output_hidden_states=True)
        for backend in ("eager", "sdpa"):
            set_attention_backend(ours, backend)
            out = ours(pixels, output_hidden_states=True)
            assert len(out.hidden_states) == len(ref.hidden_states) == 4
            for mine, theirs in zip(out.hidden_states, ref.hidden_states):
                assert (mine - theirs).abs().max() <= TOL
            assert (out.pooler_output - ref.pooler_output).abs().max() <= TOL
            # LLaVA: layer -2, CLS dropped ("default") or kept ("full"); any layer
            assert (ours.select_features(pixels) - ref.hidden_states[-2][:, 1:]).abs().max() <= TOL
            assert (ours.select_features(pixels, -1, "full") - ref.hidden_states[-1]).abs().max() <= TOL
            assert (ours.select_features(pixels, 0) - ref.hidden_states[0][:, 1:]).abs().max() <= TOL
    assert ours.select_features(pixels).shape == (2, VISION.num_patches, 48)
    with pytest.raises(ValueError, match="out of range"):
        ours.select_features(pixels, -5)
    with pytest.raises(ValueError, match="32x32"):
        ours(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("eos_token_id", [5, 2])
def test_text_tower_and_logits_match(eos_token_id):
    """eos 5: pool at the first id 5 (not the highest id). eos 2: the legacy rule, pool at the highest id (98 here)."""
    hf = hf_clip(eos_token_id)
    ours = ours_clip(hf, eos_token_id)
    ids = torch.randint(6, 90, (3, 10))
    ids[:, 0] = 97
    end = 98 if eos_token_id == 2 else eos_token_id
    ids[0, 6], ids[1, 9], ids[2, 4] = end, end, end
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    mask[2, 5:] = 0
    ids[0, 7:], ids[2, 5:] = 0, 0
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pixels, attention_mask=mask)
        logits = ours(pixels, ids, mask)
        text = ours.text_model(ids, mask)
    real = mask.bool()
    assert (text.last_hidden_state[real] - ref.text_model_output.last_hidden_state[real]).abs().max() <= TOL
    text_embeds = torch.nn.functional.normalize(ours.text_projection(text.pooler_output), dim=-1)
    assert (text_embeds - ref.text_embeds).abs().max() <= TOL      # the pooled (EOS) state, projected
    assert (logits - ref.logits_per_image).abs().max() <= TOL
    assert torch.equal(text.pooler_output[0], text.last_hidden_state[0, 6])


def test_text_model_wrapper_and_clip_loss():
    hf = hf_clip()
    ours = ours_clip(hf)
    text_only = CLIPTextModel(text_config()).eval()
    text_only.load_state_dict({k: v for k, v in hf.state_dict().items() if k.startswith("text_model.")}, strict=True)
    ids = torch.randint(3, 90, (2, 8))
    ids[:, -1] = 98
    with torch.no_grad():
        assert torch.equal(text_only(ids).pooler_output, ours.text_model(ids).pooler_output)
        ref = hf(input_ids=ids, pixel_values=torch.randn(2, 3, 32, 32), return_loss=True)
        assert torch.allclose(clip_loss(ref.logits_per_image), ref.loss, atol=1e-6)
    # a diagonal-dominant logit matrix has a lower loss than a shuffled one
    good = torch.eye(4) * 10
    assert clip_loss(good) < clip_loss(good[[1, 0, 3, 2]])
