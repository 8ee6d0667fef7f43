"""JupyterLab widgets: the strength explorer and the grid explorer of the reference table.
"""
