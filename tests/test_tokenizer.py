"""The tokenizer wrapper on the real LLaMA / Vicuna tokenizer.json."""
import pytest

from llava_mini.data.tokenizer import IMAGE_TOKEN, Tokenizer


@pytest.fixture(scope="module")
def tok(llama_tokenizer_json):
    return Tokenizer.from_file(llama_tokenizer_json)


def test_special_ids(tok):
    # LLaMA: <unk>=0, <s>=1, </s>=2; no pad token, so pad falls back to <unk> as in LLaVA.
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 0)
    # <image> is added after the 32000 base tokens, as llava-hf does.
    assert tok.image_token_id == 32000 and tok.vocab_size == 32001 and tok.IMAGE_TOKEN == IMAGE_TOKEN
    assert tok.adds_prefix_space
    assert {0, 1, 2, 32000} <= tok.special_ids


def test_encode_decode(tok):
    assert tok.encode("Hello world") == [15043, 3186]              # "▁Hello" "▁world"
    assert tok.encode("Hello world", add_bos=True) == [1, 15043, 3186]
    assert tok.encode("<image>\nHi") == [32000, 29871, 13, 18567]   # <image> "▁" "<0x0A>" "Hi" (no "▁": 6324 is "▁Hi")
    assert tok.decode([1, 15043, 3186, 2]) == "Hello world"
    assert tok.decode([1, 15043, 2], skip_special_tokens=False) == "<s> Hello</s>"


def test_save_keeps_image_token(tok, tmp_path):
    path = str(tmp_path / "tokenizer.json")
    tok.save(path)
    again = Tokenizer.from_file(str(tmp_path))                      # a folder works too
    assert again.image_token_id == 32000 and again.vocab_size == 32001   # not added a second time
    assert again.encode("a <image> b") == tok.encode("a <image> b")


def test_errors(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Tokenizer.from_file(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        Tokenizer.from_file(str(bad))
    with pytest.raises(ValueError, match="<eos>"):
        Tokenizer(tok._tok, eos_token="<eos>")


def test_image_token_must_match_the_model(tok):
    tok.check_image_token(32000, "ckpt")                                # the id llava-hf uses: fine
    with pytest.raises(ValueError, match=r"ckpt: the tokenizer's <image> id is 32000 but the model's "
                                         r"image_token_index is 32001"):
        tok.check_image_token(32001, "ckpt")
