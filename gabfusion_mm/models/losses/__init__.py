"""losses registered in the OpenMMLab registries."""
