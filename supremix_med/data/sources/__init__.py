"""Raw-format sources read without a cache: face photos (DIR split CSVs), sentence pairs (GLUE/STS-B TSVs) and
numeric tables (UCI ``.dat`` or CSV). Each module reads its files, describes its own preprocessing (a
fingerprint stored beside the model) and yields MONAI dataset items like :class:`~supremix_med.data.CachedDataset`.
"""
