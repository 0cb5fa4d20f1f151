"""Format backends, one subpackage per format; each exports ``BACKENDS``.

See :mod:`pvfs.backend` for the interface.
"""
