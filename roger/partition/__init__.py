"""A partition's processes: its supervisor, coordinator, consumers and workers.

One module per process or per part of one (see the package doc of `roger`).
"""
