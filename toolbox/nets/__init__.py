"""Network definitions behind ``toolbox.models``, one module per family of architectures."""
