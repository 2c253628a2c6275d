"""llava_mini: LLaVA (Visual Instruction Tuning) rebuilt from scratch in readable PyTorch."""
__version__ = "0.1.0"
