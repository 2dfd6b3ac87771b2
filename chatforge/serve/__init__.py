"""Serving: the OpenAI-compatible server, the chat page, and the terminal chat."""
