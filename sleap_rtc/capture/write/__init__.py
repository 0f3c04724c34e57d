"""Writing a capture: the recorder, what it does with each frame, one MCAP file."""
