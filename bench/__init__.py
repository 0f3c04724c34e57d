"""Benchmarks: each module ``bench/<name>.py`` with a ``main()`` is one benchmark.

Run all with ``python -m bench`` (``make bench``), or some with ``python -m bench codec ...``.
Benchmarks print figures against the bars in DESIGN.md; they assert nothing.
"""
