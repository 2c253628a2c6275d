"""Text and images into tensors: tokenizer (LLaMA-style BPE + `<image>`), conversation (the prompt templates and
which tokens are trained), images (CLIP preprocessing), dataset (LLaVA JSON -> samples -> padded or packed batches)."""
