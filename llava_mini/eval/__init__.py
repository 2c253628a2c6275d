"""Measuring the model: scoring (answers -> accuracy, plain functions over strings), evaluate (VQA with blind
baselines, LLaVA-Bench-style score, "Describe the image.", ScienceQA), judges (rule and LLM judges), describe (the
description score), attention_map (where an answer looks)."""
