"""The training program on top of the library (the split open_clip makes between ``open_clip`` and
``open_clip_train``): the recipes that turn a config into a finished run and use it, and the commands of
``python -m REC <command>``.

Below this package lies the library (``config``, ``utils`` and ``distributed`` on the ground; ``data``, ``model``,
``evaluator`` and ``trainer`` above them); nothing there imports from here. Here:

- recipes: ``train`` (one run, config to result), ``loaded_run`` (a finished run loaded again, for resume,
  evaluation, prediction and tests), ``evaluate``, ``predict``, ``extract`` (ViNet feature files),
  ``prefix_store`` (PixelNet's frozen-prefix store: plan and build); ``configure`` checks a config against the
  registered models;
- commands (each a ``main(argv) -> exit status``): ``launch`` (train, one process or several), ``evaluate``,
  ``predict``, ``sweep``, ``report``, ``features``, ``pack``. ``REC/__main__.py`` names them.
"""
