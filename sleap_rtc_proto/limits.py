"""Size limits both peers default to (each side may announce smaller ones in Hello)."""

from __future__ import annotations

#: Largest datachannel message (SCTP limit used by aiortc and browsers).
MAX_FRAME_BYTES = 262_144
#: Default cap on a reassembled message.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Default cap on TrainJobSpec.config_content.
MAX_CONFIG_BYTES = 1024 * 1024
