"""The ``sleap-rtc`` command line: one entry point (:mod:`.main`), one module per command."""
