"""Generators: where traces come from (import of existing data, vLLM, OpenAI-compatible servers, transformers)."""
