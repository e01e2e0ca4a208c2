"""Stage 4, registry: the retraining gate, the champion (one module owns the alias),
registration and the run summary. Imports every earlier stage and the basics."""
