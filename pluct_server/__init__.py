"""Pluct Business Engine: credits in, signed tokens out."""
