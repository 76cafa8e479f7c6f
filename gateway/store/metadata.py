"""OpenAI's metadata rules (a string map with limits), checked on every log the store writes and every patch.
Imports only the stdlib and gateway.store.errors."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.store.errors import MetadataError

METADATA_MAX_KEYS, METADATA_MAX_KEY_CHARS, METADATA_MAX_VALUE_CHARS = 16, 64, 512  # OpenAI's limits


def validate_metadata(metadata: object) -> dict[str, str]:
    """OpenAI's metadata rules: at most 16 string keys of <= 64 characters, string values of <= 512."""
    if not isinstance(metadata, Mapping):
        raise MetadataError(None, f"must be an object of strings, got {type(metadata).__name__}")
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise MetadataError(str(key), "keys must be strings")
        if len(key) > METADATA_MAX_KEY_CHARS:
            raise MetadataError(key, f"key is {len(key)} characters (limit {METADATA_MAX_KEY_CHARS})")
        if not isinstance(value, str):
            raise MetadataError(key, f"value must be a string, got {type(value).__name__}")
        if len(value) > METADATA_MAX_VALUE_CHARS:
            raise MetadataError(key, f"value is {len(value)} characters (limit {METADATA_MAX_VALUE_CHARS})")
        out[key] = value
        if len(out) > METADATA_MAX_KEYS:
            raise MetadataError(key, f"one key too many (limit {METADATA_MAX_KEYS} keys)")
    return out


def merge_metadata(current: Mapping[str, object], patch: Mapping[str, str | None]) -> dict[str, str]:
    """`current` with `patch` applied (a None value removes that key), checked like a new log's metadata."""
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return validate_metadata(merged)
