"""Signaling: the embedded websockets server (rooms, registry, relay, tokens) and its client."""
