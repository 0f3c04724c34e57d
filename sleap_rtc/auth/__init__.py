"""Authentication: JWT issue and verification (tokens), token storage (store)."""
