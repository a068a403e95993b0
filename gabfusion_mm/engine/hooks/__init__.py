"""Hooks registered in mmengine's HOOKS."""
