"""The ``logvmamba-nnunet`` command line."""
