"""backbones registered in the OpenMMLab registries."""
