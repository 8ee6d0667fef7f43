"""How a cell becomes an image: the per-cell reference (a plain pipeline call), the batched runner that reproduces
it with each family's batched conditioning, and the runners that choose between them.
"""
