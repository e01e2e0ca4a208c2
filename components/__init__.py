"""The pipeline's steps, one package a stage, in the order data flows: ``core`` (shared
basics), ``data``, ``scoring``, ``training``, ``evaluation``, ``registry``. A stage
imports only earlier stages and ``core``; plain typed functions do the work, and a thin
KFP component wrapper per step imports and calls them."""
