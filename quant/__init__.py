"""Quantization-aware training and export to the IntegerModel (needs ``bitfab[train]``)."""
