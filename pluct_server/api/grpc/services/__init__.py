"""One servicer per gRPC service: protos in, domain calls, protos out."""
