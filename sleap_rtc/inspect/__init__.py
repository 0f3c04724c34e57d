"""``sleap-rtc inspect``: look at datachannel captures.

One small module per verb (``info``, ``cat``, ``filter``, ``stats``,
``timeline``), each with ``add_arguments(parser)`` and ``run(args) -> int``;
:mod:`sleap_rtc.cli.inspect_cmd` registers them.
"""

VERBS = ("info", "cat", "filter", "stats", "timeline")
