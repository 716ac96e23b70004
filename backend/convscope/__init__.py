"""convscope: a microscope for convolutional networks (Zeiler & Fergus, ECCV 2014)."""

__version__ = "0.1.0"
