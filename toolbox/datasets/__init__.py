"""Data set readers behind ``toolbox.data_loader``, one module per family of data sets."""
