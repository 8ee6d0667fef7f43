"""A sweep from plan to measured run folder: the session's numbered steps, the prepared sources and conditions,
advisories, several processes (distributed), and verify / repair of a finished folder.
"""
