"""The instruction data: world (the synthetic shapes world, exact captions and boxes), teacher (the rule teacher
that writes conversation / detailed description / complex reasoning / short answers from them), llm_teacher and
llm_client (the paper's text-only LLM teacher over any OpenAI-compatible server), coco and easyvqa (real data)."""
