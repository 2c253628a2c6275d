"""The tiny LLaMA's text-only training (stage 0, weights/make_tiny.py): its samples, packed whole into rows, the
loop that runs its phases (pretraining, instruction tuning, the lookup drill, the binding drill), its held-out loss,
and its config.

    phases = [Phase("pretraining", lm_samples(tok, captions, chats, False, 384), 4500, 32),
              Phase("instruction tuning", lm_samples(tok, [], chats, True, 384), 4500, 32)]
    llama = train_llama(text_config(sizes, tok), phases, block=384, lr=3e-3, seed=0)
"""
from __future__ import annotations

import dataclasses

import torch
from tqdm import tqdm

from llava_mini.data.conversation import tokenize_conversation
from llava_mini.data.dataset import collate, pack
from llava_mini.data.tokenizer import Tokenizer
from llava_mini.model.config import TextConfig
from llava_mini.model.llama import LlamaForCausalLM
from llava_mini.model.lm_loss import count_trained_tokens
from llava_mini.training.optim import lr_multiplier
from llava_mini.training.recipes import BaseSizes
from weights.base_training import init_weights, optimizer_step, warmup_cosine
from weights.world_text import CHAT_TEMPLATE


def pack_text(tokenizer: Tokenizer, texts: list[str], block: int) -> torch.Tensor:
    """Each text as <s> text </s>, all concatenated and cut into blocks of `block` tokens: (n_blocks, block)."""
    stream = []
    for t in texts:
        stream += tokenizer.encode(t, add_bos=True) + [tokenizer.eos_id]
    n = len(stream) // block
    return torch.tensor(stream[:n * block], dtype=torch.long).view(n, block)


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of the LM's training: its samples (lm_samples), how many steps, how many samples a step draws, and
    its learning-rate schedule (training/optim.py: "cosine" is warmup + cosine; "wsd" holds the peak rate until the
    last fifth, for a skill that is learned abruptly after a plateau)."""
    name: str
    samples: list
    steps: int
    batch_size: int
    schedule: str = "cosine"


def lm_samples(tokenizer: Tokenizer, texts: list[str], chats: list[list[str]], answers_only: bool,
               block: int, prefixed: list[tuple[str, str]] = ()) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, labels) per sample: plain texts as <s> text </s>, chats in CHAT_TEMPLATE, and `prefixed`
    (context, text) pairs as <s> context text </s> with only the text trained. Pretraining trains every token;
    instruction tuning (`answers_only`) only the answers, with the same labels stage 2 uses
    (conversation.tokenize_conversation). A sample longer than `block` is left out (cut, it could lose its answer)."""
    samples = []
    for t in texts:
        ids = tokenizer.encode(t, add_bos=True) + [tokenizer.eos_id]
        samples.append((ids, ids))
    for context, t in prefixed:       # the words split on spaces, so the context's tokens begin the whole's
        n = len(tokenizer.encode(context, add_bos=True))
        ids = tokenizer.encode(f"{context} {t}", add_bos=True) + [tokenizer.eos_id]
        samples.append((ids, [-100] * n + ids[n:]))
    for i, chat in enumerate(tqdm(chats, desc="tokenizing chats", leave=False)):
        ids, labels = tokenize_conversation(tokenizer, chat, CHAT_TEMPLATE, sample_id=f"chat {i}")
        samples.append((ids, labels if answers_only else ids))
    kept = [(torch.tensor(ids), torch.tensor(labels)) for ids, labels in samples if len(ids) <= block]
    if not kept:
        raise ValueError(f"every LM sample is longer than --lm-block {block}")
    if len(kept) < len(samples):
        print(f"  {len(samples) - len(kept)} of {len(samples)} LM samples are longer than --lm-block {block}: left out")
    return kept


def packed_batch(samples: list[tuple[torch.Tensor, torch.Tensor]], block: int, pad_id: int) -> dict:
    """Whole samples packed into rows of at most `block` tokens (dataset.pack: segment ids keep them apart)."""
    return pack([{"input_ids": ids, "labels": labels, "length": len(ids), "pixel_values": torch.empty(0), "id": ""}
                 for ids, labels in samples], block, pad_id)


def train_llama(config, phases: list[Phase], *, block: int, lr: float, seed: int, rank: int = 0, world: int = 1,
                model=None):
    """Next-token prediction, phase by phase: each phase draws its batch of samples per step, packs them whole into
    rows of `block` tokens and runs its own schedule (a warmup of 1/20 of its steps, then cosine or wsd).

    Under torchrun every process draws and packs the same global batch, runs every `world`-th row, and weights its
    mean loss by its share of the batch's trained tokens: the summed gradients are the one-process gradient."""
    if any(phase.batch_size < world for phase in phases):
        raise ValueError(f"an LM batch ({min(p.batch_size for p in phases)} samples) must hold at least one sample "
                         f"per process ({world})")
    torch.manual_seed(seed)
    model = model or init_weights(LlamaForCausalLM(config))
    gen = torch.Generator().manual_seed(seed)
    for phase in phases:
        samples, steps = phase.samples, phase.steps
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
        multiplier = (lambda s: warmup_cosine(s, steps, max(1, steps // 20))) if phase.schedule == "cosine" else \
            lr_multiplier(phase.schedule, steps, warmup_ratio=0.05)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, multiplier)
        bar = tqdm(range(steps), desc=f"tiny LLaMA {phase.name}", disable=rank != 0)
        for _ in bar:
            picked = torch.randint(len(samples), (phase.batch_size,), generator=gen).tolist()
            batch = packed_batch([samples[i] for i in picked], block, config.pad_token_id or 0)
            if len(batch["input_ids"]) < world:      # too few rows to share: one sample per row (the same loss)
                batch = collate([{"input_ids": ids, "labels": labels, "pixel_values": torch.empty(0), "id": ""}
                                 for ids, labels in (samples[i] for i in picked)], config.pad_token_id or 0)
            total = count_trained_tokens(batch["labels"], batch["attention_mask"])
            mine = {k: batch[k][rank::world] for k in ("input_ids", "labels", "attention_mask")}
            share = count_trained_tokens(mine["labels"], mine["attention_mask"]) / total
            loss = model(**mine, return_logits=False).loss
            optimizer_step(model, opt, sched, loss * share, world)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def lm_loss(model, blocks: torch.Tensor, batch_size: int = 32) -> float:
    losses = [model(blocks[i:i + batch_size], labels=blocks[i:i + batch_size]).loss.item() * len(blocks[i:i + batch_size])
              for i in range(0, len(blocks), batch_size)]
    return sum(losses) / max(1, len(blocks))


def query_heads(hidden: int) -> int:
    """The classroom LLaMA's attention heads: heads of 32 dimensions, at least one."""
    return max(1, hidden // 32)


def text_config(z: BaseSizes, tokenizer: Tokenizer) -> TextConfig:
    """A LLaMA at classroom size: heads of 32, `text_kv_heads` key/value heads shared by the query heads (as many as
    the query heads: multi-head attention; fewer: grouped-query), the SwiGLU width LLaMA uses (8/3 of hidden, rounded
    up to 64), tied embeddings, the tokenizer's special ids."""
    heads = query_heads(z.text_hidden)
    if heads % z.text_kv_heads:
        raise ValueError(f"--text-kv-heads {z.text_kv_heads} must divide the {heads} query heads of --text-hidden "
                         f"{z.text_hidden} (heads of 32)")
    return TextConfig(vocab_size=tokenizer.vocab_size, hidden_size=z.text_hidden,
                      intermediate_size=int(z.text_hidden * 8 / 3 + 63) // 64 * 64, num_hidden_layers=z.text_layers,
                      num_attention_heads=heads, num_key_value_heads=z.text_kv_heads,
                      head_dim=32, max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True,
                      bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)


def widen_kv_heads(llama: LlamaForCausalLM, kv_heads: int) -> LlamaForCausalLM:
    """The same LLaMA with `kv_heads` key/value heads instead of fewer. Grouped-query attention repeats each
    key/value head for the query heads that share it (attention.repeat_kv); here the repeat goes into the weights,
    so the new model computes exactly what the old one did, and further training can give each query head keys
    and values of its own."""
    config, old = llama.config, llama.config.num_key_value_heads
    if kv_heads % old or config.num_attention_heads % kv_heads:
        raise ValueError(f"--text-kv-heads {kv_heads}: the LLaMA has {old} key/value head(s) for "
                         f"{config.num_attention_heads} query heads; the new number must be a multiple of the old "
                         f"one and divide the query heads")
    wide = LlamaForCausalLM(dataclasses.replace(config, num_key_value_heads=kv_heads))
    state = llama.state_dict()
    for name, w in state.items():
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:     # (old * head_dim, hidden) or its bias
            w = w.view(old, config.head_dim, *w.shape[1:]).repeat_interleave(kv_heads // old, dim=0)
            state[name] = w.reshape(kv_heads * config.head_dim, *w.shape[2:])     # (kv_heads * head_dim, ...)
    wide.load_state_dict(state, strict=True)
    return wide.train(llama.training)
