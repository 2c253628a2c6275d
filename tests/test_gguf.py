"""GGUF import: our dequantisation against gguf's reference and hand-built blocks; a tiny GGUF written the way
llama.cpp writes one (q/k rows permuted) converts back to exactly the HF weights; the tokenizer is rebuilt."""
import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from llava_mini.loading import gguf_import  # noqa: E402
from llava_mini.model.config import read_config  # noqa: E402


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_dequantize_matches_gguf_reference(type_name):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 96)) * rng.uniform(0.01, 3, size=(8, 1))).astype(np.float32)
    x[0, :32] = 0.0     # an all-zero block (scale 0)
    raw = gguf.quants.quantize(x, QT[type_name])
    ours = gguf_import.dequantize(raw, type_name, x.shape)
    reference = gguf.quants.dequantize(raw, QT[type_name])
    assert ours.dtype == np.float32 and ours.shape == x.shape
    np.testing.assert_array_equal(ours, reference)
    # And the quantisation error is what each format promises (catches a layout error that both sides share).
    tolerance = {"F32": 0, "F16": 2e-3, "BF16": 1e-2, "Q8_0": 1e-2, "Q4_0": 0.15, "Q4_1": 0.1}[type_name]
    assert np.abs(ours - x).max() <= tolerance * np.abs(x).max()


def _f16_bytes(v):
    return np.array([v], dtype="<f2").view(np.uint8)


def test_hand_built_blocks():
    """One block of each format written out byte by byte, with values we can check by eye."""
    q = np.arange(32)                                      # the 32 quantised values 0..31 (or 0..15 twice)
    q8 = np.concatenate([_f16_bytes(0.5), (q - 16).astype(np.int8).view(np.uint8)])
    np.testing.assert_array_equal(gguf_import.dequantize_q8_0(q8), 0.5 * (q - 16))

    nib = q % 16                                           # values 0..15 then 0..15
    packed = (nib[:16] | (nib[16:] << 4)).astype(np.uint8)  # byte j holds value j (low) and value j+16 (high)
    q4_0 = np.concatenate([_f16_bytes(2.0), packed])
    np.testing.assert_array_equal(gguf_import.dequantize_q4_0(q4_0), 2.0 * (nib - 8))
    q4_1 = np.concatenate([_f16_bytes(0.25), _f16_bytes(-1.0), packed])
    np.testing.assert_array_equal(gguf_import.dequantize_q4_1(q4_1), 0.25 * nib - 1.0)

    bf16 = np.array([1.5, -2.0, 3.140625], dtype=np.float32).view(np.uint32) >> 16
    np.testing.assert_array_equal(gguf_import.dequantize_bf16(bf16.astype(np.uint16).view(np.uint8)),
                                  [1.5, -2.0, 3.140625])
    with pytest.raises(ValueError, match="Q5_K is not supported"):
        gguf_import.dequantize(q8, "Q5_K", (32,))


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(4 * 8 * 3).reshape(4 * 8, 3)            # 4 heads of head_dim 8
    # llama.cpp: within each head, row r of the first half goes to 2r and row r of the second half to 2r + 1.
    permuted = np.empty_like(w)
    for h in range(4):
        for r in range(4):
            permuted[h * 8 + 2 * r] = w[h * 8 + r]
            permuted[h * 8 + 2 * r + 1] = w[h * 8 + 4 + r]
    np.testing.assert_array_equal(gguf_import.permute_rows(w, 4), permuted)
    np.testing.assert_array_equal(gguf_import.unpermute_rows(permuted, 4), w)


def _tiny_vocab():
    from tokenizers import pre_tokenizers
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = ["Ġ t", "h e", "Ġt he"]
    tokens += ["Ġt", "he", "Ġthe"]
    types = [3, 3, 3] + [1] * (len(tokens) - 3)
    return tokens, merges, types


def _write_tiny_gguf(path, hf_model, cfg, tied):
    """Write a GGUF as llama.cpp's converter does: float32 tensors, llama.cpp names, q/k rows permuted."""
    tokens, merges, types = _tiny_vocab()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])   # transformers >= 5 keeps it here
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{{ messages }}")
    names = {v: k for k, v in gguf_import.LAYER_NAMES.items()}
    for key, t in hf_model.state_dict().items():
        if key == "lm_head.weight" and tied:
            continue
        t = t.numpy()
        if key.startswith("model.layers."):
            _, _, n, *rest = key.split(".")
            module = ".".join(rest[:-1])
            if module == "self_attn.q_proj":
                t = gguf_import.permute_rows(t, cfg.num_attention_heads)
            elif module == "self_attn.k_proj":
                t = gguf_import.permute_rows(t, cfg.num_key_value_heads)
            name = f"blk.{n}.{names[module]}.weight"
        else:
            name = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                    "lm_head.weight": "output.weight"}[key]
        w.add_tensor(name, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_gguf_converts_back_to_hf_weights(tmp_path, tied):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    n_vocab = len(_tiny_vocab()[0])
    cfg = transformers.LlamaConfig(vocab_size=n_vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
                                   rms_norm_eps=1e-6, tie_word_embeddings=tied)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    _write_tiny_gguf(tmp_path / "tiny.gguf", hf, cfg, tied)

    out = gguf_import.convert_gguf(str(tmp_path / "tiny.gguf"), str(tmp_path / "hf"), progress=False)
    ours = load_file(f"{out}/model.safetensors")
    expected = {k: v.numpy() for k, v in hf.state_dict().items() if not (tied and k == "lm_head.weight")}
    assert sorted(ours) == sorted(expected)
    for k in expected:
        np.testing.assert_array_equal(ours[k], expected[k], err_msg=k)

    text = read_config(out)
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.num_attention_heads,
            text.num_key_value_heads, text.max_position_embeddings, text.rope_theta, text.rms_norm_eps,
            text.tie_word_embeddings, text.vocab_size) == (64, 96, 2, 4, 2, 128, 5000.0, 1e-6, tied, n_vocab)

    # transformers reads the folder back and computes the same logits.
    back = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, n_vocab, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, hf(ids).logits, rtol=0, atol=1e-6)


def test_tiny_gguf_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(_tiny_vocab()[0]), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2, tie_word_embeddings=True)
    _write_tiny_gguf(tmp_path / "t.gguf", transformers.LlamaForCausalLM(cfg), cfg, tied=True)
    reader = gguf.GGUFReader(str(tmp_path / "t.gguf"))
    tok = gguf_import.tokenizer_from_gguf(reader)
    tokens = _tiny_vocab()[0]
    ids = tok.encode("<|im_start|>the the 42<|im_end|>").ids
    # control tokens stay whole; " the" is one merged token; "the" without a space is t + he; digits split
    assert [tokens[i] for i in ids] == ["<|im_start|>", "t", "he", "Ġthe", "Ġ", "4", "2", "<|im_end|>"]
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>the the 42<|im_end|>"
    config = gguf_import.tokenizer_config_from_gguf(reader)
    assert (config["bos_token"], config["eos_token"], config["chat_template"]) == \
        ("<|im_start|>", "<|im_end|>", "{{ messages }}")


def test_bad_input_is_named(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="bad.gguf"):
        gguf_import.convert_gguf(str(bad), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="no place in the HF Llama layout"):
        gguf_import.hf_name("blk.0.attn_qkv.weight")
