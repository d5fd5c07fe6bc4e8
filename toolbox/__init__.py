"""Toolbox for knowledge distillation through Tucker-decomposed feature maps."""
