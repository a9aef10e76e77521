"""Compatibility shims that keep pinned third-party packages working on the current numpy / scikit-image /
setuptools stack."""
