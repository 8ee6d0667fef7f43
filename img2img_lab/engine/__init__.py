"""How a cell becomes an image: the per-cell reference (a plain pipeline call), the batched runner that reproduces
it, the conditioning it batches, and the runners that choose between them.
"""
