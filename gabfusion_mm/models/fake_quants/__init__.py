"""fake quants registered in the OpenMMLab registries."""
