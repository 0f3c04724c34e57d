"""sleap-rtc: remote training for SLEAP over WebRTC, protocol first."""

__version__ = "0.1.0"
