"""necks registered in the OpenMMLab registries."""
