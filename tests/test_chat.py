"""chat.py: one-shot and interactive sessions (subprocess) on a tiny random model, and the KV cache across turns
giving exactly the tokens of a recomputation from scratch."""
import contextlib
import io
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from llava_mini.model.config import LlavaConfig, TextConfig, VisionConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = ["A chat between a curious user and an artificial intelligence assistant.",
          "The assistant gives helpful, detailed, and polite answers to the user's questions.",
          "USER: What colour is the circle? ASSISTANT: The circle is red.",
          "How many shapes are there? Answer the question using a single word or phrase.",
          "There are two red circles and a blue square on the left. Yes no one two three four.",
          "Describe the image in detail. Which option is correct? Context: Question: Options: (A) (B) (C)",
          "green yellow purple triangle star rectangle diamond top bottom right center background é ü"]


def make_tokenizer_json(path: str) -> str:
    """A small SentencePiece-like BPE (Metaspace: words start with "▁"), trained in a blink on CORPUS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.save(path)
    return path


def make_tiny_checkpoint(folder: str, template: str = "vicuna_v1", seed: int = 0, context: int = 160) -> str:
    """A random tiny LLaVA saved the way train.py saves one: safetensors + config + tokenizer + llava_mini.json."""
    from llava_mini.data.tokenizer import Tokenizer
    from llava_mini.loading.weights import save_llava
    from llava_mini.model.llava import LlavaForConditionalGeneration
    os.makedirs(folder, exist_ok=True)
    tok_path = os.path.join(folder, "tok_src.json")
    tokenizer = Tokenizer.from_file(make_tokenizer_json(tok_path))
    tokenizer.save(tok_path)                       # now with <image>
    torch.manual_seed(seed)
    vision = VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          image_size=32, patch_size=8, projection_dim=32)
    text = TextConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                      bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, tie_word_embeddings=True)
    config = LlavaConfig(vision_config=vision, text_config=text, projector_type="mlp2x_gelu",
                         image_token_index=tokenizer.image_token_id, image_aspect_ratio="pad")
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():   # a random model whose greedy answers are not one token repeated: sharpen the logits
        model.language_model.model.embed_tokens.weight.mul_(20)
    out = save_llava(model, os.path.join(folder, "model"), tokenizer_json=tok_path,
                     extra_json={"llava_mini.json": {"template": template}})
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    model_dir = make_tiny_checkpoint(str(root / "ckpt"))
    image = str(root / "img.png")
    Image.new("RGB", (40, 32), (200, 30, 30)).save(image)
    return model_dir, image


def _run(args, stdin=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "chat.py"), *args], input=stdin, capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


def test_one_shot_prints_the_greedy_answer(tiny):
    from llava_mini.eval.evaluate import generate_answers
    from llava_mini.loading.model_folder import load_checkpoint
    model_dir, image = tiny
    result = _run(["--model", model_dir, "--image", image, "--prompt", "What colour is the circle?",
                   "--max-new-tokens", "12", "--device", "cpu"])
    assert result.returncode == 0, result.stderr
    model, tokenizer, template = load_checkpoint(model_dir)
    expected = generate_answers(model, tokenizer, ["What colour is the circle?"], [Image.open(image).convert("RGB")],
                                template=template, max_new_tokens=12)[0]
    assert expected and result.stdout.strip() == expected


def test_interactive_session_commands(tiny, tmp_path):
    model_dir, image = tiny
    script = "\n".join(["What colour is the circle?", "/image /no/such/file.png", "How many shapes are there?",
                        "/reset", "/frobnicate", "/image " + image, "Describe the image in detail.", "/quit",
                        "never read"]) + "\n"
    result = _run(["--model", model_dir, "--image", image, "--max-new-tokens", "8"], stdin=script)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("ASSISTANT: ") == 3                      # three questions answered, nothing after /quit
    assert "could not open the image" in out and "/no/such/file.png" in out
    assert "conversation reset" in out and "unknown command /frobnicate" in out and "new image" in out


def _main_exits(args, monkeypatch, cwd=ROOT) -> str:
    """Run chat.py's main in this process as `python chat.py` does (no interpreter start-up); its error message."""
    sys.path.insert(0, ROOT)
    import chat
    from llava_mini import cli
    monkeypatch.chdir(cwd)
    err = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(err):
        cli.run(chat.main, args)
    return err.getvalue() if exit_info.value.code == 1 and err.getvalue() else str(exit_info.value.code)


def test_missing_model_and_too_long_prompt(tiny, tmp_path, monkeypatch):
    model_dir, image = tiny
    assert "no model at" in _main_exits(["--model", str(tmp_path / "nothing"), "--prompt", "hi"], monkeypatch)
    message = _main_exits(["--model", model_dir, "--image", image, "--prompt", "red " * 200, "--device", "cpu"],
                          monkeypatch)
    assert "more than the model's context of 160" in message and "/reset" in message
    assert "image not found" in _main_exits(["--model", model_dir, "--image", str(tmp_path / "x.png")], monkeypatch)


def test_default_model_missing_says_train(tmp_path, monkeypatch):
    assert "python train.py" in _main_exits(["--prompt", "hi"], monkeypatch, cwd=str(tmp_path))


def test_kv_cache_across_turns_equals_recomputation(tiny):
    sys.path.insert(0, ROOT)
    from chat import ChatSession
    from llava_mini.loading.model_folder import load_checkpoint
    model_dir, image = tiny
    model, tokenizer, template = load_checkpoint(model_dir)
    session = ChatSession(model, tokenizer, template, max_new_tokens=6)
    session.set_image(image)
    session.ask("What colour is the circle?")
    cached_len = len(session.cache)
    answer = session.ask("How many shapes are there?")
    assert len(session.cache) > cached_len                         # the cache grew, it was not rebuilt
    assert len(session.cache) == len(session.history) - 1 + model.config.num_image_tokens

    # From scratch: the whole history of ids up to the second question, no cache.
    second_prompt_len = len(session.history) - len(answer) - (1 if session.last_stopped else 0)
    full = torch.tensor([session.history[:second_prompt_len]])
    fresh = model.generate(full, session.image[None], max_new_tokens=6, stop_token_ids=session.stop_ids)
    assert fresh.tokens[0] == answer
    # The cached history reads as the template's two-turn conversation.
    text = tokenizer.decode(session.history[:second_prompt_len], skip_special_tokens=False)
    assert text.count("USER:") == 2 and text.rstrip().endswith("How many shapes are there? ASSISTANT:")


def test_stream_printer_handles_split_characters():
    sys.path.insert(0, ROOT)
    import io

    from chat import StreamPrinter

    class ByteTok:       # decodes ids as UTF-8 bytes: "é" is two tokens, the first alone is U+FFFD
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")
    out = io.StringIO()
    printer = StreamPrinter(ByteTok(), out)
    for b in "café ü".encode():
        printer(b)
    assert out.getvalue() == "café ü" and "\ufffd" not in out.getvalue()


def test_a_text_only_llama_chats_without_an_image(tmp_path):
    """A plain LLaMA folder (as weights/download.py --offline smollm2 writes): chat.py talks to it with its own
    template and the tokens generate() gives; an image for it is one error line; a LLaVA-only command refuses it."""
    from llava_mini.data.conversation import tokenize_prompt
    from llava_mini.data.tokenizer import Tokenizer
    from llava_mini.loading.model_folder import load_checkpoint
    from llava_mini.loading.weights import save_llama
    from llava_mini.model.llama import LlamaForCausalLM
    tok_path = make_tokenizer_json(str(tmp_path / "tok.json"))
    tokenizer = Tokenizer.from_file(tok_path)
    torch.manual_seed(0)
    llm = LlamaForCausalLM(TextConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, bos_token_id=tokenizer.bos_id,
                                      eos_token_id=tokenizer.eos_id, tie_word_embeddings=True))
    with torch.no_grad():
        llm.model.embed_tokens.weight.mul_(20)
    folder = save_llama(llm, str(tmp_path / "llm"), tokenizer_json=tok_path)
    result = _run(["--model", folder, "--prompt", "What colour is the sky?", "--max-new-tokens", "10"])
    assert result.returncode == 0, result.stderr
    model, tok, template = load_checkpoint(folder, text_only_ok=True)
    assert template == "vicuna_v1" and isinstance(model, LlamaForCausalLM)
    ids = torch.tensor([tokenize_prompt(tok, ["What colour is the sky?"], template)])
    expected = tok.decode(model.generate(input_ids=ids, max_new_tokens=10).tokens[0]).strip()
    assert expected and result.stdout.strip() == expected
    refused = _run(["--model", folder, "--image", "x.png", "--prompt", "hi"])
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "text-only model (no vision tower): it cannot take --image" in refused.stderr
    with pytest.raises(ValueError, match="is a text-only LLaMA checkpoint"):
        load_checkpoint(folder)
