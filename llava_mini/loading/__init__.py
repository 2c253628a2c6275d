"""Checkpoints in and out: weights (every layout: ours, HF llava, original LLaVA, HF CLIP and LLaMA), safetensors_io
(sharded safetensors, key checks, meta-device loading), hub (downloads with an offline route), gguf_import."""
