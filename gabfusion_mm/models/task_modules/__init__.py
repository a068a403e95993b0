"""task modules registered in the OpenMMLab registries."""
