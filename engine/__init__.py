"""The generator and everything the model needs.

No Qt, no devices, no threads: usable from a notebook or a server.
"""
