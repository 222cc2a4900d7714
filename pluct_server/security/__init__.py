"""Who is calling and how much they may: callers, keys, limits, signatures, tokens."""
