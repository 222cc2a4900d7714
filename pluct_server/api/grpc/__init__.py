"""gRPC: the interceptor every call passes, field rules, reflection, servicers."""
