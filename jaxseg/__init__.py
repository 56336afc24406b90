"""jaxseg: FCN, DeconvNet and PSPNet semantic segmentation in JAX/Flax (README.md: the layout)."""
