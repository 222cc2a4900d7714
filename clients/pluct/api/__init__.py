"""Generated from protos/ by clients/generate.py; do not edit."""
