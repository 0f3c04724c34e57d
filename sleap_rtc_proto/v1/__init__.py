"""Generated protobuf bindings of schema package sleap_rtc_proto.v1 (do not edit)."""
