"""The model, the afternoon read: config -> attention -> clip (the vision tower) -> projector -> llama (the decoder)
-> llava (the three joined: image patches spliced into the token sequence). These files import only torch and
model/config.py; their attribute names are Hugging Face's, so HF checkpoints load with strict=True."""
