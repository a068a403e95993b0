"""layers registered in the OpenMMLab registries."""
