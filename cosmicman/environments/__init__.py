"""The environments the code location runs in, one file each: resources, and how steps execute.

``COSMICMAN_ENV`` picks one (``local`` by default). Assets never branch on it; only what these files
build differs. ``local`` is the only place the synthetic world (``cosmicman.simulation``) is wired in.
"""
