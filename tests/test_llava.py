"""LLaVA parity with transformers' LlavaForConditionalGeneration, and the one-placeholder-per-image splice."""
import pytest
import torch

from llava_mini.model.attention import set_attention_backend
from llava_mini.model.config import LlavaConfig, TextConfig, VisionConfig
from llava_mini.model.llava import LlavaForConditionalGeneration

transformers = pytest.importorskip("transformers")

TOL = 1e-5
IMAGE = 98                       # placeholder id (the last row of the embedding table, as in llava-hf)
P = 16                           # image tokens per image: (32 / 8) ** 2 patches, CLS dropped


def tiny_config(projector_type="mlp2x_gelu") -> LlavaConfig:
    vision = VisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                          image_size=32, patch_size=8)
    text = TextConfig(vocab_size=99, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, eos_token_id=2, bos_token_id=1)
    return LlavaConfig(vision_config=vision, text_config=text, projector_type=projector_type, image_token_index=IMAGE)


def hf_to_ours(state: dict) -> dict:
    """transformers-5 llava keys -> the HF llava layout our model uses."""
    renames = [("model.vision_tower.", "vision_tower.vision_model."), ("model.multi_modal_projector.",
               "multi_modal_projector."), ("model.language_model.", "language_model.model."),
               ("lm_head.", "language_model.lm_head.")]
    out = {}
    for key, value in state.items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def make_pair(act="gelu", seed=0):
    cfg = tiny_config(f"mlp2x_{act}")
    torch.manual_seed(seed)
    hf = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(**cfg.to_hf())).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "norm" in n and n.endswith("weight"):
                p.uniform_(0.5, 1.5)
    ours = LlavaForConditionalGeneration(cfg).eval()
    ours.load_state_dict(hf_to_ours(hf.state_dict()), strict=True)
    return hf, ours


def expand(ids: list[int]) -> torch.Tensor:
    """HF wants every placeholder pre-expanded to image_seq_length copies."""
    return torch.tensor([[t for i in ids for t in ([i] * P if i == IMAGE else [i])]])


@pytest.mark.parametrize("act", ["gelu", "linear"])
def test_logits_match_transformers(act):
    hf, ours = make_pair(act)
    ids = [1, 5, 6, IMAGE, 7, 8, 9, IMAGE, 10]                  # two images in one prompt
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(input_ids=expand(ids), pixel_values=pixels).logits
        for backend in ("eager", "sdpa"):
            set_attention_backend(ours, backend)
            out = ours(torch.tensor([ids]), pixel_values=pixels)
            assert out.logits.shape == ref.shape == (1, len(ids) - 2 + 2 * P, 99)
            assert (out.logits - ref).abs().max() <= TOL


def test_loss_and_expanded_labels_match_transformers():
    hf, ours = make_pair()
    ids = [1, IMAGE, 11, 12, 13, 14]
    labels = torch.tensor([[-100, -100, -100, 12, 13, 14]])
    pixels = torch.randn(1, 3, 32, 32)
    hf_labels = torch.tensor([[-100] * (P + 2) + [12, 13, 14]])
    with torch.no_grad():
        out = ours(torch.tensor([ids]), pixels, labels=labels)
        ref = hf(input_ids=expand(ids), pixel_values=pixels, labels=hf_labels)
    assert torch.equal(out.labels, hf_labels)
    assert torch.allclose(out.loss, ref.loss, atol=1e-6)


def test_greedy_generation_matches_transformers():
    hf, ours = make_pair(seed=1)
    ids = [1, 5, IMAGE, 7, 8]
    pixels = torch.randn(1, 3, 32, 32)
    hf_ids = expand(ids)
    ref = hf.generate(input_ids=hf_ids, pixel_values=pixels, attention_mask=torch.ones_like(hf_ids),
                      max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)[0, hf_ids.shape[1]:]
    out = ours.generate(torch.tensor([ids]), pixels, max_new_tokens=20, stop_token_ids=())
    assert out.tokens[0] == ref.tolist()


def test_mixed_batch_equals_samples_alone():
    """Row 0 has two images, row 1 none (text-only), row 2 one; right-padded rows and packed segment ids."""
    _, ours = make_pair()
    a, b, c = [1, IMAGE, 4, IMAGE, 5], [1, 6, 7, 8, 9, 10, 11], [1, 12, IMAGE, 13]
    pixels = torch.randn(3, 3, 32, 32)
    batch = torch.zeros(3, 7, dtype=torch.long)
    seg = torch.zeros(3, 7, dtype=torch.long)
    for row, ids in enumerate([a, b, c]):
        batch[row, :len(ids)], seg[row, :len(ids)] = torch.tensor(ids), 1
    labels = batch.masked_fill(seg == 0, -100)
    with torch.no_grad():
        out = ours(batch, pixels, seg, labels=labels)
        alone = [ours(torch.tensor([a]), pixels[:2]), ours(torch.tensor([b])), ours(torch.tensor([c]), pixels[2:])]
    for row, single in enumerate(alone):
        n = single.logits.shape[1]
        assert (out.logits[row, :n] - single.logits[0]).abs().max() <= TOL
        assert (out.attention_mask[row, :n] == 1).all() and (out.attention_mask[row, n:] == 0).all()
    assert out.logits.shape[1] == 7 - 2 + 2 * P      # row 0's own padding is kept, then rows are right-padded
    assert (out.labels[0, 1:1 + P] == -100).all() and out.labels[0, 1 + P] == 4
    # two samples packed into one row (segments 1 and 2) give the same logits as each alone
    packed = torch.tensor([a + c])
    with torch.no_grad():
        out = ours(packed, pixels[[0, 1, 2]], torch.tensor([[1] * len(a) + [2] * len(c)]))
    n_a = alone[0].logits.shape[1]
    assert (out.logits[0, :n_a] - alone[0].logits[0]).abs().max() <= TOL
    assert (out.logits[0, n_a:] - alone[2].logits[0]).abs().max() <= TOL


def test_placeholder_image_count_mismatch_is_a_clear_error():
    _, ours = make_pair()
    with pytest.raises(ValueError, match=r"2 image placeholder\(s\).*1 image\(s\)"):
        ours(torch.tensor([[1, IMAGE, 3, IMAGE]]), torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"0 image placeholder\(s\).*1 image\(s\)"):
        ours(torch.tensor([[1, 2, 3]]), torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"1 image placeholder\(s\).*0 image\(s\)"):
        ours(torch.tensor([[1, IMAGE, 3]]))


def test_single_linear_projector_and_cast_to_llm_dtype():
    cfg = tiny_config("linear")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    assert sorted(model.multi_modal_projector.state_dict()) == ["linear_1.bias", "linear_1.weight"]
    model.language_model.to(torch.float64)
    model.multi_modal_projector.to(torch.float64)          # vision tower stays fp32
    with torch.no_grad():
        features = model.encode_images(torch.randn(2, 3, 32, 32))
        out = model(torch.tensor([[1, IMAGE, 5]]), torch.randn(1, 3, 32, 32))
    assert features.shape == (2, P, 64) and features.dtype == torch.float64
    assert out.logits.shape == (1, 2 + P, 99) and out.logits.dtype == torch.float64


def test_chat_continues_across_turns_with_cache():
    _, ours = make_pair(seed=2)
    turn1, turn2 = [1, IMAGE, 20, 21], [30, 31, 32]
    pixels = torch.randn(1, 3, 32, 32)
    first = ours.generate(torch.tensor([turn1]), pixels, max_new_tokens=4, stop_token_ids=())
    second = ours.generate(torch.tensor([turn2]), max_new_tokens=4, stop_token_ids=(),
                           past_key_values=first.past_key_values)
    history = torch.tensor([turn1 + first.tokens[0] + turn2])
    assert second.tokens[0] == ours.generate(history, pixels, max_new_tokens=4, stop_token_ids=()).tokens[0]
