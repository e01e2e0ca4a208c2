"""The shared basics every stage may import: settings (each step's config section) and
the section machinery (loading, one-line errors, config files), errors, atomic writes,
artifact file names, the MLflow tracking handle and the texts of run descriptions."""
