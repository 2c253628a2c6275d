"""Measuring the model: scoring (answers -> accuracy, plain functions over strings), evaluate (VQA with blind
baselines, LLaVA-Bench-style score, ScienceQA), judges (rule and LLM judges), attention_map (where an answer looks)."""
