"""The satjepa app: query-by-image retrieval and scene classification, I-JEPA and MAE side by side.

``python -m retrieval_app`` starts it. :mod:`retrieval_app.service` is the library beneath (no gradio):
models, indexes and catalogues loaded once; query, classify, explain, export. :mod:`retrieval_app.ui` is the
gradio front end (``create_demo(service)``).
"""
