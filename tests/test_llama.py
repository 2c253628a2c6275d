"""LLaMA decoder parity with transformers' LlamaForCausalLM, KV cache, masks and attention backends."""
import pytest
import torch

from llava_mini.model.attention import set_attention_backend
from llava_mini.model.config import TextConfig
from llava_mini.model.kv_cache import KVCache, StaticKVCache
from llava_mini.model.llama import LlamaForCausalLM
from llava_mini.model.lm_loss import answer_weights, causal_lm_loss

transformers = pytest.importorskip("transformers")

TOL = 1e-5


def tiny_config(n_kv_heads=4, tied=False, **kw):
    return TextConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=n_kv_heads, max_position_embeddings=128, rms_norm_eps=1e-6,
                      rope_theta=500.0, tie_word_embeddings=tied, eos_token_id=2, bos_token_id=1, **kw)


def make_pair(cfg: TextConfig, seed=0):
    """A random HF model and ours holding the same weights."""
    torch.manual_seed(seed)
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf().items() if k not in ("model_type",)})
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    with torch.no_grad():   # HF inits norms to 1; randomise them so the norm weights are really tested
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    state = hf.state_dict()
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)       # as in a real tied checkpoint
    ours = LlamaForCausalLM(cfg).eval()
    ours.load_state_dict(state, strict=True)
    return hf, ours


@pytest.mark.parametrize("n_kv_heads,tied", [(4, False), (2, False), (4, True), (1, True)])
def test_logits_match_transformers(n_kv_heads, tied):
    cfg = tiny_config(n_kv_heads, tied)
    hf, ours = make_pair(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 13))
    with torch.no_grad():
        ref = hf(ids).logits
        for backend in ("eager", "sdpa"):
            set_attention_backend(ours, backend)
            assert (ours(ids).logits - ref).abs().max() <= TOL, backend
    if tied:
        assert ours.lm_head.weight is ours.model.embed_tokens.weight


def test_loss_matches_transformers():
    hf, ours = make_pair(tiny_config(2))
    ids = torch.randint(0, 97, (2, 11))
    labels = ids.clone()
    labels[:, :4] = -100
    with torch.no_grad():
        assert torch.allclose(ours(ids, labels=labels).loss, hf(ids, labels=labels).loss, atol=1e-6)


def test_tied_weights_survive_assign_loading():
    cfg = tiny_config(2, tied=True)
    _, ours = make_pair(cfg)
    fresh = LlamaForCausalLM(cfg)
    fresh.load_state_dict({k: v.clone() for k, v in ours.state_dict().items() if k != "lm_head.weight"},
                          strict=True, assign=True)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight


def test_greedy_generation_matches_transformers():
    cfg = tiny_config(2)
    hf, ours = make_pair(cfg, seed=1)
    ids = torch.randint(3, cfg.vocab_size, (1, 7))
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                      eos_token_id=None, pad_token_id=0)[0, 7:].tolist()
    out = ours.generate(ids, max_new_tokens=20, stop_token_ids=())
    assert out.tokens[0] == ref
    assert len(out.past_key_values) == 7 + 20   # prompt + every generated token


def test_kv_cache_equals_full_recompute():
    cfg = tiny_config(2)
    _, ours = make_pair(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 12))
    with torch.no_grad():
        full = ours(ids).logits
        cache = KVCache(cfg.num_hidden_layers)
        parts = [ours(ids[:, a:b], past_key_values=cache, use_cache=True).logits for a, b in [(0, 5), (5, 6), (6, 12)]]
    assert (torch.cat(parts, 1) - full).abs().max() <= TOL


def test_chat_continuation_with_cache():
    """Turn 2 fed after turn 1's cache gives the same tokens as generating from the whole history at once."""
    cfg = tiny_config(2)
    _, ours = make_pair(cfg, seed=2)
    turn1, turn2 = torch.randint(3, 97, (1, 6)), torch.randint(3, 97, (1, 4))
    first = ours.generate(turn1, max_new_tokens=5, stop_token_ids=())
    second = ours.generate(turn2, max_new_tokens=5, stop_token_ids=(), past_key_values=first.past_key_values)
    history = torch.cat([turn1, torch.tensor([first.tokens[0]]), turn2], 1)
    assert second.tokens[0] == ours.generate(history, max_new_tokens=5, stop_token_ids=()).tokens[0]


def test_packed_row_equals_separate_samples():
    cfg = tiny_config(2)
    _, ours = make_pair(cfg)
    a, b = torch.randint(0, 97, (1, 5)), torch.randint(0, 97, (1, 7))
    packed = torch.cat([a, b, torch.zeros(1, 3, dtype=torch.long)], 1)
    seg = torch.tensor([[1] * 5 + [2] * 7 + [0] * 3])
    with torch.no_grad():
        for backend in ("eager", "sdpa"):
            set_attention_backend(ours, backend)
            logits = ours(packed, attention_mask=seg).logits
            assert not logits.isnan().any()
            assert (logits[:, :5] - ours(a).logits).abs().max() <= TOL
            assert (logits[:, 5:12] - ours(b).logits).abs().max() <= TOL


def test_left_and_right_padding_give_same_logits():
    cfg = tiny_config(2)
    _, ours = make_pair(cfg)
    x = torch.randint(0, 97, (1, 6))
    pad = torch.zeros(1, 3, dtype=torch.long)
    with torch.no_grad():
        alone = ours(x).logits
        right = ours(torch.cat([x, pad], 1), attention_mask=torch.tensor([[1] * 6 + [0] * 3])).logits[:, :6]
        left = ours(torch.cat([pad, x], 1), attention_mask=torch.tensor([[0] * 3 + [1] * 6])).logits[:, 3:]
    assert (right - alone).abs().max() <= TOL and (left - alone).abs().max() <= TOL


def test_right_padded_batches_take_the_causal_fast_path(monkeypatch):
    """A right-padded batch (one sample per row) needs no explicit mask: every real token sees only real tokens
    before it under plain causal attention. The fast path must be taken there, and only there."""
    from llava_mini.model import llama
    assert llama.right_padded_single(torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert not llama.right_padded_single(torch.tensor([[0, 1, 1]]))       # left padding
    assert not llama.right_padded_single(torch.tensor([[1, 0, 1]]))       # a hole
    assert not llama.right_padded_single(torch.tensor([[1, 2, 0]]))       # packed
    cfg = tiny_config(2)
    _, ours = make_pair(cfg)
    calls = []
    real = llama.attention
    monkeypatch.setattr(llama, "attention", lambda q, k, v, mask, backend, causal: calls.append(
        (mask is None, causal)) or real(q, k, v, mask, backend, causal))
    x = torch.randint(0, 97, (2, 6))
    with torch.no_grad():
        padded = ours(x, attention_mask=torch.tensor([[1] * 6, [1] * 4 + [0] * 2])).logits
        assert set(calls) == {(True, True)}
        assert (padded[1:, :4] - ours(x[1:, :4]).logits).abs().max() <= TOL
        calls.clear()
        ours(x, attention_mask=torch.tensor([[1] * 6, [0] * 2 + [1] * 4]))
        assert set(calls) == {(False, False)}


def test_loss_only_equals_the_loss_from_full_logits():
    """return_logits=False projects only the trained positions; the loss and the gradients must not change,
    with padding, -100 labels and packed rows (the prediction across a segment boundary is not trained)."""
    cfg = tiny_config(2, tied=True)
    _, ours = make_pair(cfg, seed=4)
    x = torch.randint(3, 97, (2, 9))
    seg = torch.tensor([[1] * 9, [1] * 4 + [2] * 3 + [0] * 2])
    labels = x.clone()
    labels[0, :3] = -100
    labels[1, 7:] = -100
    results = []
    for return_logits in (True, False):
        ours.zero_grad()
        out = ours(x, attention_mask=seg, labels=labels, return_logits=return_logits)
        out.loss.backward()
        results.append((out.loss.detach(), [p.grad.clone() for p in ours.parameters()], out.logits))
    (full, full_grads, logits), (only, only_grads, none) = results
    assert logits is not None and none is None
    assert (full - only).abs() < 1e-6
    assert max((a - b).abs().max() for a, b in zip(full_grads, only_grads)) < 1e-6


def test_answer_weighting_weighs_each_answer_by_its_length():
    """An answer is a run of trained targets (rows and packed segments end one): with weighting w, each of its n
    tokens weighs n ** -w, and the loss is the weighted mean of the per-token cross entropies."""
    targets = torch.tensor([[-100, 5, 6, 7, 8, -100, 9, -100],
                            [4, -100, -100, 3, 3, 3, 3, 3]])
    assert answer_weights(targets, 0.0).tolist() == (targets != -100).float().tolist()
    w = answer_weights(targets, 0.5)
    assert w[0].tolist() == pytest.approx([0, .5, .5, .5, .5, 0, 1, 0])
    assert w[1].tolist() == pytest.approx([1, 0, 0] + [5 ** -0.5] * 5)
    assert answer_weights(targets, 1.0).sum() == pytest.approx(4)         # four answers, one each
    cfg = tiny_config(2)
    _, ours = make_pair(cfg, seed=5)
    x = torch.randint(3, 97, (2, 9))
    labels = torch.cat([torch.full((2, 1), -100), targets], dim=1)        # position t predicts labels[t + 1]
    with torch.no_grad():
        logits = ours(x).logits
        loss_only = ours(x, labels=labels, return_logits=False, answer_weighting=0.5).loss.item()
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 97), targets.clamp(min=0).reshape(-1),
                                           reduction="none").view(2, 8)
    expected = (ce * w).sum() / w.sum()
    assert causal_lm_loss(logits, labels, answer_weighting=0.5).item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss_only == pytest.approx(expected.item(), rel=1e-5)
    unweighted = ce[targets != -100].mean().item()
    assert causal_lm_loss(logits, labels).item() == pytest.approx(unweighted, rel=1e-5)
    assert abs(expected.item() - unweighted) > 1e-3      # the weighting changes the loss


def test_batched_generation_right_padded_equals_single():
    cfg = tiny_config(2)
    _, ours = make_pair(cfg, seed=3)
    p1, p2 = torch.randint(3, 97, (5,)), torch.randint(3, 97, (8,))
    batch = torch.zeros(2, 8, dtype=torch.long)
    batch[0, :5], batch[1] = p1, p2
    seg = (torch.arange(8)[None] < torch.tensor([[5], [8]])).long()
    out = ours.generate(batch, attention_mask=seg, max_new_tokens=6, stop_token_ids=())
    assert out.tokens[0] == ours.generate(p1[None], max_new_tokens=6, stop_token_ids=()).tokens[0]
    assert out.tokens[1] == ours.generate(p2[None], max_new_tokens=6, stop_token_ids=()).tokens[0]


def test_stop_token_and_streamer():
    cfg = tiny_config(2)
    _, ours = make_pair(cfg)
    ids = torch.randint(3, 97, (1, 5))
    free = ours.generate(ids, max_new_tokens=8, stop_token_ids=()).tokens[0]
    streamed = []
    out = ours.generate(ids, max_new_tokens=8, stop_token_ids=(free[3],), streamer=streamed.append)
    assert out.tokens[0] == free[:free.index(free[3])] == streamed


def test_sampling_is_seeded_and_top_p_tiny_is_greedy():
    cfg = tiny_config(2)
    _, ours = make_pair(cfg)
    ids = torch.randint(3, 97, (1, 5))
    s1 = ours.generate(ids, max_new_tokens=8, temperature=1.0, generator=torch.Generator().manual_seed(0)).tokens
    s2 = ours.generate(ids, max_new_tokens=8, temperature=1.0, generator=torch.Generator().manual_seed(0)).tokens
    assert s1 == s2
    greedy = ours.generate(ids, max_new_tokens=8, stop_token_ids=()).tokens
    nucleus = ours.generate(ids, max_new_tokens=8, temperature=1.0, top_p=1e-6, stop_token_ids=()).tokens
    assert nucleus == greedy


def test_output_attentions_are_probabilities():
    cfg = tiny_config(2)
    _, ours = make_pair(cfg)
    ids = torch.randint(0, 97, (1, 6))
    with torch.no_grad():
        out = ours(ids, output_attentions=True)
        assert (out.logits - ours(ids).logits).abs().max() <= TOL
    assert len(out.attentions) == cfg.num_hidden_layers and out.attentions[0].shape == (1, 4, 6, 6)
    assert torch.allclose(out.attentions[0].sum(-1), torch.ones(1, 4, 6))
    assert out.attentions[0][0, 0].triu(1).abs().max() == 0     # causal: nothing from the future


def test_gradient_checkpointing_same_gradients():
    cfg = tiny_config(2)
    _, ours = make_pair(cfg)
    ours.train()
    ids = torch.randint(0, 97, (2, 9))
    grads = []
    for flag in (False, True):
        ours.zero_grad()
        ours.model.gradient_checkpointing = flag
        with torch.enable_grad():     # independent of any global grad mode another test may have left behind
            ours(ids, labels=ids).loss.backward()
        grads.append(ours.model.layers[0].self_attn.q_proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_static_cache_equals_full_recompute():
    """Prefill in chunks into a preallocated cache (the queries land in the middle of its slots) == no cache."""
    cfg = tiny_config(2)
    _, ours = make_pair(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 12))
    with torch.no_grad():
        full = ours(ids).logits
        cache = StaticKVCache.for_model(cfg, batch_size=2, max_len=32)
        parts = [ours(ids[:, a:b], past_key_values=cache, use_cache=True).logits for a, b in [(0, 5), (5, 6), (6, 12)]]
    assert (torch.cat(parts, 1) - full).abs().max() <= TOL
    assert len(cache) == 12
    with pytest.raises(ValueError, match="holds 32 tokens: 12 are cached and 21 more do not fit"):
        ours(torch.zeros(2, 21, dtype=torch.long), past_key_values=cache, use_cache=True)


def test_static_cache_generation_equals_dynamic():
    """Batched, right-padded prompts of different lengths, then a second turn on the same cache: the static cache
    decodes exactly the dynamic cache's tokens."""
    cfg = tiny_config(2)
    _, ours = make_pair(cfg, seed=3)
    ids = torch.randint(3, 97, (3, 10))
    seg = torch.tensor([[1] * 10, [1] * 7 + [0] * 3, [1] * 4 + [0] * 6])
    runs = []
    for static in (False, True):
        first = ours.generate(ids, attention_mask=seg, max_new_tokens=8, stop_token_ids=(5,), static_cache=static)
        second = ours.generate(ids[:, :3], max_new_tokens=6, stop_token_ids=(), past_key_values=first.past_key_values)
        runs.append((first.tokens, second.tokens, type(first.past_key_values)))
    assert runs[0][:2] == runs[1][:2]
    assert (runs[0][2], runs[1][2]) == (KVCache, StaticKVCache)


def test_compiled_decoding_gives_the_eager_tokens():
    """chat.py --compile: the one-token step compiled over a static cache decodes the eager model's very tokens,
    and a prompt of another length (same 128-slot cache) reuses the compiled graph."""
    from torch._dynamo import utils as dynamo_utils
    cfg = tiny_config(2)
    _, ours = make_pair(cfg, seed=4)
    prompts = [torch.randint(3, 97, (1, n)) for n in (9, 13)]
    keys = list(ours.state_dict())
    eager = [ours.generate(p, max_new_tokens=6, stop_token_ids=()).tokens for p in prompts]
    ours.compile_decoding()
    assert ours.generate(prompts[0], max_new_tokens=6, stop_token_ids=()).tokens == eager[0]
    graphs = dynamo_utils.counters["stats"]["unique_graphs"]
    out = ours.generate(prompts[1], max_new_tokens=6, stop_token_ids=())
    assert out.tokens == eager[1] and isinstance(out.past_key_values, StaticKVCache)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == graphs      # no recompile
    assert list(ours.state_dict()) == keys
