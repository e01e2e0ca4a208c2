"""Stage 1, data: list a source, ingest (manifest, quarantine, duplicates, data report),
split, normalize to TFRecords, augment the training split. Imports only the basics."""
