"""The way to the model providers: model names, retries, fallbacks and best-of-N candidates (router), the providers
themselves (a direct OpenAI-compatible path, LiteLLM for the rest, an in-process local model), and reading their
event streams (events). Knows nothing of criteria, the store, the services or HTTP serving.
"""
