"""The measured reference table: calibration rounds, crossings with bootstrap confidence intervals, the result and
its rendering, saved calibrations, model comparison and the mode table.
"""
