"""The doors: gRPC services behind one interceptor, and the JSON shim over them."""
