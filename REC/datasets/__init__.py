"""Importers for public recommendation datasets that are not released in PixelRec's own layout.

Each module here turns one dataset's files into what the rest of PixelRec reads, an interactions CSV
``<data_path>/<dataset>.csv`` and covers under ``<data_path>/cover/``, so that ``generate_lmdb.py`` and
``main.py`` run on it unchanged: ``python -m REC.datasets.<name> --help``.
"""
