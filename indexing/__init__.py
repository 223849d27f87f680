"""Similarity search over satellite image archives: a FAISS index per model with a DuckDB catalogue
(``python -m indexing build|search|merge|evaluate``), and the offline mAP@k / kNN / linear-probe evaluation.

Layout of one model's index (``<index-dir>/<model>/``): ``catalog.duckdb`` (images, embeddings, manifest) and
``index-<generation>.faiss`` (the FAISS index named by the manifest). See :mod:`indexing.catalog`.
"""
