"""``python -m sleap_rtc.gui [labels.slp]``: SLEAP with Run Remotely."""

from sleap_rtc.gui.launch import main

raise SystemExit(main())
