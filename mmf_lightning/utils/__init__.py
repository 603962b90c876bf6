"""Helpers every layer may use: atomic files and locks, recorded constructor arguments, fingerprints, a quiet
console."""
