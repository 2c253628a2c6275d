"""Import a LLaMA-architecture GGUF file (llama.cpp's format) into the Hugging Face layout.

    from llava_mini.loading.gguf_import import convert_gguf
    convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "checkpoints/smollm2")
    # -> checkpoints/smollm2/{model.safetensors, config.json, tokenizer.json, tokenizer_config.json}

Four things happen, each in its own function below:
1. dequantise every tensor to float32 (our own code for F32, F16, BF16, Q8_0, Q4_0, Q4_1: the block formats are short);
2. rename llama.cpp's tensors to HF's keys and undo the row permutation llama.cpp applies to q_proj and k_proj;
3. build config.json from the `llama.*` metadata;
4. rebuild tokenizer.json from the `tokenizer.ggml.*` metadata (byte-level BPE, as GPT-2 / SmolLM2 / Llama-3 use).

The file is read with the `gguf` package (pip install gguf), an optional dependency imported only here.
"""
from __future__ import annotations

import os
import re

import numpy as np

from llava_mini.jsonio import write_json
from llava_mini.model.config import TextConfig


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError("reading GGUF files needs the `gguf` package: pip install gguf") from None
    return gguf


# ---------------------------------------------------------------------------------------------------------------
# 1. Dequantisation. A GGUF tensor is a flat run of bytes. Float types are plain arrays; quantised types cut each
# row into blocks of 32 values, and each block stores one or two fp16 numbers followed by the packed integers.
# (The real tensor shape is kept separately; rows are always a whole number of blocks.)

BLOCK = 32   # values per block in Q8_0, Q4_0, Q4_1


def _split_blocks(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    raw = np.ascontiguousarray(raw).reshape(-1)
    if raw.size % block_bytes:
        raise ValueError(f"{raw.size} bytes is not a whole number of {block_bytes}-byte blocks")
    return raw.reshape(-1, block_bytes)                                   # (n_blocks, block_bytes)


def _fp16_column(blocks: np.ndarray, start: int) -> np.ndarray:
    """The little-endian fp16 stored at bytes [start, start+2) of every block, as a (n_blocks, 1) float32 column."""
    return np.ascontiguousarray(blocks[:, start:start + 2]).view(np.float16).astype(np.float32)


def _unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """16 bytes -> 32 4-bit values: the low nibbles are values 0..15, the high nibbles values 16..31."""
    return np.concatenate([packed & 0x0F, packed >> 4], axis=1)          # (n_blocks, 32), 0..15


def dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    """Q8_0 block (34 bytes): fp16 scale d, then 32 int8 q. Value = d * q."""
    blocks = _split_blocks(raw, 2 + BLOCK)
    d = _fp16_column(blocks, 0)
    q = np.ascontiguousarray(blocks[:, 2:]).view(np.int8).astype(np.float32)
    return (d * q).reshape(-1)


def dequantize_q4_0(raw: np.ndarray) -> np.ndarray:
    """Q4_0 block (18 bytes): fp16 scale d, then 16 bytes of 4-bit q (0..15). Value = d * (q - 8)."""
    blocks = _split_blocks(raw, 2 + BLOCK // 2)
    d = _fp16_column(blocks, 0)
    q = _unpack_nibbles(blocks[:, 2:]).astype(np.float32) - 8.0
    return (d * q).reshape(-1)


def dequantize_q4_1(raw: np.ndarray) -> np.ndarray:
    """Q4_1 block (20 bytes): fp16 scale d, fp16 minimum m, then 16 bytes of 4-bit q. Value = d * q + m."""
    blocks = _split_blocks(raw, 4 + BLOCK // 2)
    d, m = _fp16_column(blocks, 0), _fp16_column(blocks, 2)
    q = _unpack_nibbles(blocks[:, 4:]).astype(np.float32)
    return (d * q + m).reshape(-1)


def dequantize_bf16(raw: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift the 16 bits up and reinterpret."""
    bits = np.ascontiguousarray(raw).reshape(-1).view(np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32)


DEQUANTIZERS = {
    "F32": lambda raw: np.ascontiguousarray(raw).reshape(-1).view(np.float32).copy(),
    "F16": lambda raw: np.ascontiguousarray(raw).reshape(-1).view(np.float16).astype(np.float32),
    "BF16": dequantize_bf16,
    "Q8_0": dequantize_q8_0,
    "Q4_0": dequantize_q4_0,
    "Q4_1": dequantize_q4_1,
}


def dequantize(raw: np.ndarray, type_name: str, shape: tuple) -> np.ndarray:
    """Bytes of one GGUF tensor -> float32 array of `shape` (numpy order: rows first)."""
    if type_name not in DEQUANTIZERS:
        raise ValueError(f"GGUF tensor type {type_name} is not supported (supported: {', '.join(DEQUANTIZERS)}); "
                         "re-quantise the model to one of these with llama.cpp's llama-quantize")
    return DEQUANTIZERS[type_name](raw.view(np.uint8)).reshape(shape)


def read_tensor(tensor) -> np.ndarray:
    """A gguf.ReaderTensor -> float32 numpy array in HF orientation (out_features, in_features).

    GGUF lists dimensions fastest-first (ne0 = columns), so the numpy shape is the reverse."""
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    return dequantize(tensor.data, tensor.tensor_type.name, shape)


# ---------------------------------------------------------------------------------------------------------------
# 2. Names and the Q/K permutation.

LAYER_NAMES = {   # llama.cpp blk.N.<name> -> HF model.layers.N.<name>
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'; unknown names are an error."""
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(2) in LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(1) in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no place in the HF Llama layout "
                     "(rope_freqs means Llama-3.1 rope scaling, which we do not support)")


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation.

    HF's RoPE rotates the two halves of each head (rotate_half: dims i and i + head_dim/2 form a pair); llama.cpp
    rotates adjacent dims (2i, 2i+1). So its converter reorders the output rows of q_proj and k_proj within each
    head: row r of half h (h = 0, 1) moves to position 2r + h. Viewing a head's rows as (2, head_dim/2) and swapping
    those axes does it; here we view them as (head_dim/2, 2) and swap back. For k_proj n_heads is the number of
    key/value heads.
    """
    rows = w.shape[0]
    head_dim = rows // n_heads
    return (w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:])   # (heads, pair index, member of pair, ...)
             .swapaxes(1, 2)                                       # (heads, half, row within half, ...)
             .reshape(w.shape))


def permute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's forward permutation (HF rotate_half layout -> interleaved pairs); the inverse of unpermute_rows."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------------------------------------------
# 3. Metadata -> config.

def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def text_config_from_gguf(reader) -> TextConfig:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture is {arch!r}; only 'llama' is supported")

    def need(key):
        value = _field(reader, f"llama.{key}")
        if value is None:
            raise ValueError(f"GGUF metadata has no llama.{key}")
        return value

    names = {t.name for t in reader.tensors}
    n_heads = need("attention.head_count")
    hidden = need("embedding_length")
    vocab = _field(reader, "llama.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    return TextConfig(
        vocab_size=int(vocab), hidden_size=int(hidden), intermediate_size=int(need("feed_forward_length")),
        num_hidden_layers=int(need("block_count")), num_attention_heads=int(n_heads),
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv", n_heads)),
        head_dim=int(_field(reader, "llama.attention.key_length", hidden // n_heads)),
        max_position_embeddings=int(need("context_length")),
        # float32 metadata: round to the decimal it was written from (1e-05, not 9.99999974e-06)
        rms_norm_eps=float(np.format_float_positional(np.float32(need("attention.layer_norm_rms_epsilon")))),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"))


def state_dict_from_gguf(reader, config: TextConfig, progress: bool = True) -> dict[str, np.ndarray]:
    """All tensors dequantised, renamed to HF keys, q/k rows un-permuted."""
    from tqdm import tqdm
    state = {}
    for t in tqdm(reader.tensors, desc="dequantise", unit="tensor", disable=not progress):
        name = hf_name(t.name)
        w = read_tensor(t)
        if name.endswith("self_attn.q_proj.weight"):
            w = unpermute_rows(w, config.num_attention_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            w = unpermute_rows(w, config.num_key_value_heads)
        state[name] = w
    return state


# ---------------------------------------------------------------------------------------------------------------
# 4. Tokenizer. llama.cpp stores the vocabulary (tokens in id order), the BPE merges in rank order, a type per
# token, and the name of the pre-tokenizer (the regex that splits text into words before BPE).

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer(name: str):
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as pt
    if name in ("default", "gpt2", "gpt-2"):
        return pt.ByteLevel(add_prefix_space=False, use_regex=True)
    if name == "smollm":   # SmolLM / SmolLM2: every digit is its own word, then GPT-2's regex
        return pt.Sequence([pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False, use_regex=True)])
    if name in ("llama-bpe", "llama3"):
        return pt.Sequence([pt.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                            pt.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise ValueError(f"GGUF pre-tokenizer {name!r} is not supported (supported: default, gpt2, smollm, llama-bpe)")


def _strings(reader, key: str) -> list[str]:
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def tokenizer_from_gguf(reader):
    """Rebuild a `tokenizers.Tokenizer` (byte-level BPE) from tokenizer.ggml.* metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported; only byte-level BPE ('gpt2') is. "
                         "For the LLaMA SentencePiece tokenizer use llava_mini.loading.hub.get_llama_tokenizer()")
    tokens = _strings(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _strings(reader, "tokenizer.ggml.merges")]
    types = list(_field(reader, "tokenizer.ggml.token_type", [TOKEN_NORMAL] * len(tokens)))
    unk_id = _field(reader, "tokenizer.ggml.unknown_token_id")

    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               unk_token=tokens[unk_id] if unk_id is not None else None))
    tok.pre_tokenizer = _pre_tokenizer(_field(reader, "tokenizer.ggml.pre", "default"))
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # Control tokens (<|im_start|>, <|endoftext|>, ...) must never be split by BPE: register them as added tokens.
    # They are already in the vocabulary, so they keep their ids.
    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == TOKEN_CONTROL]
    user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == TOKEN_USER_DEFINED]
    tok.add_special_tokens(special)
    tok.add_tokens(user)
    return tok


def tokenizer_config_from_gguf(reader) -> dict:
    """tokenizer_config.json: the special token strings and the chat template, as HF writes them."""
    tokens = reader.fields["tokenizer.ggml.tokens"]

    def token(key):
        i = _field(reader, f"tokenizer.ggml.{key}_token_id")
        return None if i is None else bytes(tokens.parts[tokens.data[i]]).decode("utf-8")

    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": token("bos"), "eos_token": token("eos"),
           "unk_token": token("unknown"), "pad_token": token("padding"),
           "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
           "model_max_length": int(_field(reader, "llama.context_length", 2048))}
    template = _field(reader, "tokenizer.chat_template")
    if template:
        cfg["chat_template"] = template
    return cfg


# ---------------------------------------------------------------------------------------------------------------

def convert_gguf(gguf_path: str, out_dir: str, progress: bool = True) -> str:
    """GGUF file -> HF-layout folder: model.safetensors (float32), config.json, tokenizer.json,
    tokenizer_config.json. Every file is written under a temporary name and renamed, model.safetensors last,
    so a folder holding model.safetensors is complete. Returns out_dir."""
    gguf = _import_gguf()
    from safetensors.numpy import save_file
    if not os.path.isfile(gguf_path):
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    try:
        reader = gguf.GGUFReader(gguf_path)
    except Exception as e:
        raise ValueError(f"{gguf_path}: not a readable GGUF file ({e})") from None

    config = text_config_from_gguf(reader)
    state = state_dict_from_gguf(reader, config, progress)
    os.makedirs(out_dir, exist_ok=True)
    tmp = f".tmp{os.getpid()}"

    hf_config = config.to_hf()
    hf_config["torch_dtype"] = "float32"
    write_json(hf_config, os.path.join(out_dir, "config.json"))
    if "tokenizer.ggml.tokens" in reader.fields:
        tokenizer_path = os.path.join(out_dir, "tokenizer.json")
        tokenizer_from_gguf(reader).save(tokenizer_path + tmp)
        os.replace(tokenizer_path + tmp, tokenizer_path)
        write_json(tokenizer_config_from_gguf(reader), os.path.join(out_dir, "tokenizer_config.json"))

    model_path = os.path.join(out_dir, "model.safetensors")
    save_file(state, model_path + tmp, metadata={"format": "pt", "source": os.path.basename(gguf_path)})
    os.replace(model_path + tmp, model_path)
    return out_dir
