"""gRPC servicers: each translates its protos to and from the domain, nothing else."""
