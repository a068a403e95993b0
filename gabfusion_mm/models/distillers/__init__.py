"""distillers registered in the OpenMMLab registries."""
