"""Authentication: JWT issue and verification (tokens), token storage (store).

Logging in talks to the signaling server, so it lives on the client side:
:mod:`sleap_rtc.client.login`.
"""
