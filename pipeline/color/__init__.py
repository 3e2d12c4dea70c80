"""CIE Lab conversions (D65, sRGB), in numpy/OpenCV for the host and in torch for accelerators."""
