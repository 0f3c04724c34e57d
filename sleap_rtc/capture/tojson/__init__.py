"""Captured messages as JSON: json_format's dict, and the ``cat --json`` fast path."""
