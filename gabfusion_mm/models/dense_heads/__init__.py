"""dense heads registered in the OpenMMLab registries."""
