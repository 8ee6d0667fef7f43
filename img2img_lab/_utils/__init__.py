"""Helpers every layer may use: the layer table and the use graph it is checked on, atomic file writes, quiet
third-party output, the torchvision shim, YAML/JSON config files, byte-level tokenizer files and the version.
Private: nothing here is part of the API.
"""
