"""The server: an OpenAI-compatible HTTP backend over one Agent (service, streaming, transport, adapter memory)."""
