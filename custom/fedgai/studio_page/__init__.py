"""`fedgai studio`: the studio page, a local web page that a designer opens in a browser.

It sketches dropped photos in the studio's own style, blends them towards styles other studios chose to
share, and shows what joining the federation gave the studio (its latest evaluation and round progress).
Everything it does reuses the product's own code: framing and runners of ``fedgai sketch``
(``edge/``), the blending of ``fedgai fuse`` (``edge/style_blend.py``), and the readers of ``fedgai evaluate`` and the
round summaries. It writes no file: uploads live in memory only.

Modules: ``engine`` (the model, loaded once), ``uploads`` (what a browser may send), ``joining`` (evaluation and
rounds), ``app`` (the FastAPI app, its access rules, and ``serve``).
"""

DEFAULT_PORT = 8765
MAX_UPLOAD_MB = 40  # largest photo file the page takes; the pixel cap is the run's data.max_megapixels (40 MP)
