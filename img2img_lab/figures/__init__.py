"""What a run folder shows: comparison grids, strength curves, the consistency heatmap, the HTML report (with its
strength section) and exports to other tools.
"""
