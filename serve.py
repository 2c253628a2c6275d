"""Serve a model over an OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models), and the classroom page
(GET /: pick a held-out image, ask, watch the answer stream in and where it looked), on this machine.

    python serve.py                                          # the model `python train.py` leaves, 127.0.0.1:8000
    python serve.py --model checkpoints/smollm2 --port 8001  # a text-only LLM (e.g. the LLM teacher or judge)
    python serve.py --host 0.0.0.0 --api-key-env LLAVA_MINI_API_KEY   # reachable from others: require a key

Then, from any OpenAI-style client (llava_mini.synth.llm_client.LLMClient("http://127.0.0.1:8000/v1", "tiny")):

    curl -s http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "Describe the image."}], "temperature": 0}'

Images travel in the messages as data: URLs. The server binds 127.0.0.1 unless told otherwise; the key is read from
an environment variable, so it never appears in a command line or a log.
"""
from __future__ import annotations

import os
import sys

from llava_mini import cli
from llava_mini.loading.model_folder import load_checkpoint
from llava_mini.model.attention import BACKENDS, set_attention_backend
from llava_mini.serving.openai_api import Engine
from llava_mini.serving.server import make_server

DEFAULT_MODEL = "checkpoints/tiny/final"


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="a LLaVA checkpoint folder, or a text-only LLaMA one")
    cli.add_checkpoint_arguments(p)
    p.add_argument("--name", help="the model's name in the API (default: the folder's name)")
    p.add_argument("--template", help="conversation template (default: the checkpoint's)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=cli.non_negative_int, default=8000)
    p.add_argument("--api-key-env", help="name of an environment variable holding the key every request must send")
    p.add_argument("--device", default="cpu")
    p.add_argument("--attention", choices=BACKENDS, default="sdpa")
    p.add_argument("--compile", action="store_true", help="compiled decode step over a static KV cache")
    p.add_argument("--max-new-tokens", type=cli.positive_int, default=512, help="when a request gives no max_tokens")
    p.add_argument("--max-body-mb", type=cli.positive_float, default=16.0, help="largest request body")
    p.add_argument("--images", default="data/shapes/images/test", help="the page's gallery of images to choose from")
    p.add_argument("--quiet", action="store_true", help="no log line per request")
    args = p.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env {args.api_key_env}: that environment variable is empty or not set")
    model, tokenizer, template = load_checkpoint(args.model, args.vision_tower, args.device, text_only_ok=True,
                                                 model_base=args.model_base)
    set_attention_backend(model, args.attention)
    if args.compile:
        (model.language_model if hasattr(model, "language_model") else model).compile_decoding()
    folder = os.path.normpath(args.model)             # checkpoints/tiny/final -> "tiny"
    name = args.name or os.path.basename(os.path.dirname(folder) if os.path.basename(folder) == "final" else folder)
    engine = Engine(model, tokenizer, args.template or template, name, args.device, args.max_new_tokens)
    server = make_server(engine, args.host, args.port, api_key, int(args.max_body_mb * 2 ** 20), quiet=args.quiet,
                         image_dir=args.images)
    host, port = server.server_address[:2]
    print(f"serving {name} ({engine.parameters / 1e6:.1f}M parameters, {'text only' if engine.text_only else 'vision'})"
          f" on http://{host}:{port}/v1; the classroom page: http://{host}:{port}/" +
          (" (API key required)" if api_key else ""), file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    cli.run(main)
