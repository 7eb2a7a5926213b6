"""A stand-in for the `openai` package, which Debian does not carry: the
tests of llama.cpp's suite that use its client are skipped, and only those
(they skip when they build the client)."""
import pytest


class OpenAI:
    def __init__(self, *args, **kwargs):
        pytest.skip("the openai package is not installed (Debian has none); tests/server covers the client")


class APIError(Exception):
    pass


class AuthenticationError(APIError):
    pass
