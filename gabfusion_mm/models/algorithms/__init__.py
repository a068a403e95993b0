"""algorithms registered in the OpenMMLab registries."""
