"""Transports: byte links between a client and a worker (in-memory, WebRTC)."""
