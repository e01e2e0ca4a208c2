"""The names of the files steps hand to each other: one place, so a producer and its
consumers cannot drift apart. Files private to one module (training checkpoints, TFRecord
shard statistics) are named in that module."""

# ingest
MANIFEST = "manifest.parquet"
INGEST_REPORT = "report.json"
INGEST_REPORT_MD = "report.md"
INGEST_REPORT_HTML = "report.html"
# an ingest partition task's output, which the merge task reads (meta last: a partition without it is incomplete)
INGEST_PARTITION_ROWS = "partition_rows.parquet"
INGEST_PARTITION_THUMBS = "partition_thumbs.u8"  # 16x16x3 uint8 rows, no header
INGEST_PARTITION_META = "partition.json"
# split
SPLITS = "splits.parquet"
SPLIT_REPORT = "split_report.json"
# normalize: components.data.tfrecords.META_FILE describes the shards
# augment
AUGMENT_POLICY = "policy.json"
# train
MODEL = "model.keras"
CLASSES = "classes.json"
# per-class offsets of the decision, fitted on validation (components.scoring.decisions)
DECISION_BIAS = "decision_bias.json"
# what a model was trained on, beside it: {"synthetic": true} for the generated demo data
MODEL_INFO = "model_info.json"
# fitted on the validation split when training ends, applied by every user of the model
# (components.scoring.inference.LoadedModel): the temperature (components.scoring.calibration),
# the melanoma operating points (components.scoring.operating_points), the referral
# threshold (components.scoring.referral)
CALIBRATION = "calibration.json"
OPERATING_POINTS = "operating_points.json"
REFERRAL = "referral.json"
FITTED_ON_VALIDATION = (DECISION_BIAS, CALIBRATION, OPERATING_POINTS, REFERRAL)
# evaluate
METRICS = "metrics.json"
PREDICTIONS = "predictions.npz"
EVALUATION_REPORT = "report.html"
SUBGROUPS_TABLE = "subgroups.csv"
# register: the registered version's model card (components.registry.model_card)
MODEL_CARD_MD = "model_card.md"
MODEL_CARD_JSON = "model_card.json"
# register
GATE = "gate.json"
# the run
SUMMARY = "summary.json"
