"""Helpers every layer may use: atomic file writes, quiet third-party output, the torchvision shim, YAML/JSON
config files. Private: nothing here is part of the API.
"""
