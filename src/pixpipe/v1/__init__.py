"""Generated protobuf and gRPC code for package pixpipe.v1 (make protos); do not edit."""
