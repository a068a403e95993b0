"""quantizers registered in the OpenMMLab registries."""
