"""Serving a model over HTTP: the OpenAI chat-completions convention (openai_api.py) and the server (server.py)."""
