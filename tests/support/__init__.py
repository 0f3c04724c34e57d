"""Test helpers: stand-in trainer and protocol client."""
