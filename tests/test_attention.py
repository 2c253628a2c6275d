"""The attention entry point: backends agree, GQA, segment-id masks, positions, padding never gives NaN."""
import pytest
import torch

from llava_mini.model.attention import attention, build_mask, eager_attention, positions_from_mask


def qkv(B=2, H=4, H_kv=2, T=6, S=6, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, D, generator=g), torch.randn(B, H_kv, S, D, generator=g),
            torch.randn(B, H_kv, S, D, generator=g))


def test_build_mask_rule():
    seg = torch.tensor([[1, 1, 2, 2, 2, 0]])
    m = build_mask(seg)[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [0, 0, 1, 0, 0, 0],
                             [0, 0, 1, 1, 0, 0],
                             [0, 0, 1, 1, 1, 0],
                             [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(m, expected)
    assert positions_from_mask(build_mask(seg)).tolist() == [[0, 1, 0, 1, 2, 0]]


def test_build_mask_with_cached_keys():
    cached, new = torch.tensor([[0, 1, 1]]), torch.tensor([[1, 1]])      # left-padded history, two new tokens
    mask = build_mask(new, torch.cat([cached, new], 1))
    assert mask[0, 0].int().tolist() == [[0, 1, 1, 1, 0], [0, 1, 1, 1, 1]]
    assert positions_from_mask(mask).tolist() == [[2, 3]]


@pytest.mark.parametrize("H_kv", [4, 2, 1])
def test_backends_agree_with_mask_and_gqa(H_kv):
    q, k, v = qkv(H_kv=H_kv)
    seg = torch.tensor([[1, 1, 1, 2, 2, 0], [0, 0, 1, 1, 1, 1]])
    mask = build_mask(seg)
    eager, sdpa = attention(q, k, v, mask, "eager"), attention(q, k, v, mask, "sdpa")
    assert not eager.isnan().any() and not sdpa.isnan().any()
    assert (eager - sdpa).abs().max() < 1e-5
    # padding queries give exactly zero
    assert eager[0, :, 5].abs().max() == 0 and sdpa[1, :, :2].abs().max() == 0


def test_causal_fast_path_equals_mask():
    q, k, v = qkv()
    mask = build_mask(torch.ones(2, 6, dtype=torch.long))
    for backend in ("eager", "sdpa"):
        assert (attention(q, k, v, causal=True, backend=backend) - attention(q, k, v, mask, backend)).abs().max() < 1e-6


def test_causal_flag_refuses_a_cache_shape():
    """With cached keys (S > T) the kernels would align causality differently; a mask is required instead."""
    q, k, v = qkv(T=2, S=6)
    with pytest.raises(ValueError, match="as many queries as keys"):
        attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match="not both"):
        attention(q, k, v, build_mask(torch.ones(2, 2, dtype=torch.long), torch.ones(2, 6, dtype=torch.long)),
                  causal=True)


def test_gqa_equals_explicitly_repeated_heads():
    q, k, v = qkv(H_kv=2)
    k4, v4 = k[:, [0, 0, 1, 1]], v[:, [0, 0, 1, 1]]       # query heads 0,1 use kv head 0; heads 2,3 use kv head 1
    assert torch.allclose(attention(q, k, v, backend="eager"), attention(q, k4, v4, backend="eager"))


def test_eager_probs_and_no_nan_gradients_through_padding():
    q, k, v = qkv()
    q.requires_grad_(True)
    mask = build_mask(torch.tensor([[1, 1, 1, 1, 0, 0]] * 2))
    out, probs = eager_attention(q, k, v, mask)
    assert torch.allclose(probs[:, :, :4].sum(-1), torch.ones(2, 4, 4)) and probs[:, :, 4:].abs().max() == 0
    for backend in ("eager", "sdpa"):
        q.grad = None
        attention(q, k, v, mask, backend).sum().backward()
        assert not q.grad.isnan().any(), backend


def test_unknown_backend_is_an_error():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, k, v, backend="flash")


def test_flex_equals_eager_on_every_mask_kind():
    """FlexAttention (compiled once per padded shape) against the eager definition: causal, right- and left-padded,
    packed, bidirectional, with grouped-query heads; another mask of the same shape reuses the compiled kernel.
    40 keys with 16-dim heads is a shape torch 2.13's CPU kernel gets wrong unpadded. (Forward only: FlexAttention
    has no backward on the CPU in torch 2.13, which the backend says.)"""
    import torch._dynamo.utils as dynamo_utils
    q, k, v = qkv(B=2, H=4, H_kv=2, T=40, S=40, D=16)
    pads = torch.tensor([[1] * 33 + [0] * 7, [0] * 5 + [1] * 35])
    packed = torch.tensor([[1] * 12 + [2] * 20 + [3] * 5 + [0] * 3, [1] * 40])
    with torch.no_grad():
        assert (attention(q, k, v, causal=True, backend="flex") -
                attention(q, k, v, causal=True, backend="eager")).abs().max() < 1e-5
        compiled = dynamo_utils.counters["stats"]["unique_graphs"]
        for seg in (pads, packed):
            mask = build_mask(seg)
            assert (attention(q, k, v, mask, "flex") - attention(q, k, v, mask, "eager")).abs().max() < 1e-5
        full = attention(q, k, v, backend="flex")                         # no mask: the CLIP tower
        assert (full - attention(q, k, v, backend="eager")).abs().max() < 1e-5
        q2, k2, v2 = qkv(B=2, H=4, H_kv=2, T=100, S=100, D=16, seed=1)    # another length in the same block
        assert (attention(q2, k2, v2, causal=True, backend="flex") -
                attention(q2, k2, v2, causal=True, backend="eager")).abs().max() < 1e-5
        assert dynamo_utils.counters["stats"]["unique_graphs"] == compiled   # no new compile for any of them
    with pytest.raises(ValueError, match="no backward pass on the CPU"):
        attention(q.requires_grad_(), k, v, causal=True, backend="flex")


@pytest.mark.parametrize("S", [24, 57])
def test_flex_with_cached_keys_equals_eager(S):
    """One new token over a KV cache whose rows hold different amounts of history (left padding)."""
    q, k, v = qkv(B=2, H=4, H_kv=2, T=1, S=S, D=16)
    cached = torch.tensor([[0] * 6 + [1] * (S - 7), [1] * (S - 1)])
    mask = build_mask(torch.ones(2, 1, dtype=torch.long), torch.cat([cached, torch.ones(2, 1, dtype=torch.long)], 1))
    with torch.no_grad():
        assert (attention(q, k, v, mask, "flex") - attention(q, k, v, mask, "eager")).abs().max() < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention has no backward pass on the CPU in torch 2.13")
def test_flex_gradients_equal_eager_on_a_gpu():
    """Where flex can train (a GPU): its gradients equal the eager definition's on causal, packed and padded masks."""
    q, k, v = (t.cuda() for t in qkv(B=2, H=4, H_kv=2, T=40, S=40, D=16))
    packed = build_mask(torch.tensor([[1] * 12 + [2] * 20 + [3] * 5 + [0] * 3, [1] * 33 + [0] * 7]).cuda())
    for mask, causal in ((None, True), (packed, False)):
        grads = []
        for backend in ("flex", "eager"):
            inputs = [t.clone().requires_grad_() for t in (q, k, v)]
            attention(*inputs, mask, backend, causal).square().sum().backward()
            grads.append([t.grad for t in inputs])
        for flex_grad, eager_grad in zip(*grads):
            assert (flex_grad - eager_grad).abs().max() < 1e-4
