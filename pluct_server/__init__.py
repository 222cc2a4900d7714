"""Pluct Business Engine: prepaid credits in, short-lived signed tokens out."""

import os

# gRPC's fork handlers crash a child forked while gRPC threads run (we fork pg_ctl as another
# user, which rules out vfork); we never use gRPC in a child, so the handlers are not needed.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

__version__ = "0.1.0"
