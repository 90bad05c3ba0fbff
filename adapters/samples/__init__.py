"""Sample province exports, one per legacy format the adapters read, and the generator that writes them.

The files are committed; ``python -m adapters.samples.make_samples`` rewrites them byte for byte.
"""
