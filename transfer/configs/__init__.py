"""Recipe data: protocol defaults (``defaults.py``) and one recipe table per data set (``<dataset>.py``).

These files hold plain dicts only; ``transfer.recipes`` merges them (defaults → data set → arch → command line).
"""
